"""``prepare_thread_for_cuda_graph_trees``: a thread other than the one that imported inductor gets the
CUDA-graph-tree state that compiled modules look up on first run (torch 2.11 asserted without it; the
failure itself needs a GPU: test_cuda_engine.py runs it across threads there)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch._inductor import cudagraph_trees as trees

from viewneti_backend.base_model import prepare_thread_for_cuda_graph_trees


def _state_in_new_thread() -> dict:
    seen: dict = {}

    def run() -> None:
        seen["before"] = hasattr(trees.local, "tree_manager_containers")
        prepare_thread_for_cuda_graph_trees()
        seen["local"] = hasattr(trees.local, "tree_manager_containers") and hasattr(trees.local, "tree_manager_locks")
        seen["tls"] = torch._C._is_key_in_tls("tree_manager_containers") and torch._C._is_key_in_tls(
            "tree_manager_locks"
        )
        containers = trees.local.tree_manager_containers
        prepare_thread_for_cuda_graph_trees()  # again: keeps what the thread has
        seen["kept"] = trees.local.tree_manager_containers is containers
        seen["own"] = containers is not main_containers

    main_containers = trees.local.tree_manager_containers
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return seen


@pytest.mark.parametrize("torch_sets_it_up", [True, False], ids=["torch-initializer", "older-torch"])
def test_a_new_thread_gets_its_own_graph_tree_state(monkeypatch, torch_sets_it_up):
    if not torch_sets_it_up:  # what torch before 2.13 lacks: the helper sets the state up itself
        monkeypatch.delattr(trees, "_initialize_tls", raising=False)
    seen = _state_in_new_thread()
    assert seen == {"before": False, "local": True, "tls": True, "kept": True, "own": True}
