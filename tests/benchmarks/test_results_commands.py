"""The commands benchmarks/RESULTS.md gives for each benchmark script still parse, to the values they
ask for: the flags a script takes from a config (BenchmarkConfig, TrainConfig) keep their names."""

import importlib
import shlex

import pytest

# (script, arguments as RESULTS.md writes them, parsed values they must give)
RESULTS_COMMANDS = [
    (
        "gpu_bench",
        "--out benchmarks/gpu_bench.json --inversion-steps 200 --eager-inversion-steps 50 "
        "--reference-inversion-steps 2 --compile reduce-overhead --profile inversion",
        {"inversion_steps": 200, "augmentation_pool": 0, "profile": "inversion"},
    ),
    (
        "gpu_bench",
        "--out benchmarks/gpu_bench_inversion_session10.json --skip equivalence,view,live --compile reduce-overhead "
        "--inversion-steps 200 --eager-inversion-steps 20 --reference-inversion-steps 1 --augmentation-pool 256 "
        "--profile inversion,inversion-timeline",
        {"augmentation_pool": 256, "eager_inversion_steps": 20},
    ),
    (
        "toy_invert_steps",
        "--objects 2 --first-object 1000001 --seeds 0 --checkpoints 150,300 --threads 1 --augmentation-pool 256 "
        "--out benchmarks/toyworld/augmentation_pool_256_objects_1000001-1000002.json",
        {"n_objects": 2, "first_object": 1000001, "seeds": [0], "checkpoints": [150, 300], "augmentation_pool": 256},
    ),
    (
        "toy_invert_steps",
        "--objects 2 --seeds 0 --checkpoints 150,300,600,1200 --threads 2",
        {"n_objects": 2, "checkpoints": [150, 300, 600, 1200], "render_steps": 30, "guidance": 2.0},
    ),
    (
        "toy_timestep_spacing",
        "--objects 3 --seeds 0 --invert-steps 300 --threads 2",
        {"n_objects": 3, "seeds": [0], "invert_steps": 300, "threads": 2},
    ),
    (
        "toy_sampling_sweep",
        "--threads 2 --steps 2,3,4,6,8,10,30 --guidance 2",
        {"steps": [2, 3, 4, 6, 8, 10, 30], "guidances": [2.0], "seeds": [0, 1], "views": 8},
    ),
    ("toy_sampling_sweep", "--threads 2 --steps 10,30 --guidance 1,1.5,2,3", {"guidances": [1.0, 1.5, 2.0, 3.0]}),
    ("toy_step_convergence", "--threads 2", {"guidance": 2.0, "seeds": [0, 1], "views": 8}),
    ("toy_context_length", "--threads 2", {"seeds": [0, 1], "views": 8}),
    (
        "toy_object_scale",
        "--model folder --ddpm-steps 0 --guidance 1,2 --threads 1",
        {"guidances": [1.0, 2.0], "render_steps": 30, "ddpm_steps": 0},
    ),
    ("cpu_render", "--threads 2 --n 20 --invert-steps 10", {"invert_steps": 10, "n": 20}),
    ("cpu_render", "--threads 2 --n 12 --invert-steps 2 --model copy", {"invert_steps": 2, "model": "copy"}),
    ("server_overhead", "--n 30 --threads 1", {"n": 30, "steps": 30}),
    ("gpu_render_options", "--out $OUT/gpu_render_options.json", {"sections": "timeline,fp8-unet,fp8-text"}),
    ("gpu_render_options", "--out $OUT/ab_before_1.json --sections none --repeats 10", {"repeats": 10}),
    ("gpu_render_options", "--out $OUT/gpu_text_phase.json --sections text-phase", {"sections": "text-phase"}),
    (
        "gpu_render_options",
        "--out $OUT/gpu_render_options_cancel.json --sections cancel --repeats 3",
        {"sections": "cancel", "repeats": 3, "cancel_after_ms": 150.0},
    ),
    (  # session 20's run, with --variant-jobs renamed --jobs
        "gpu_render_options",
        "--out $OUT/gpu_render_options_variants.json --sections nchw,max-autotune --jobs view,live --repeats 3",
        {"sections": "nchw,max-autotune", "jobs": "view,live", "repeats": 3},
    ),
    ("gpu_render_options", "--out $OUT/gpu_group_norm.json --sections group-norm", {"sections": "group-norm"}),
    (  # session 21's run (its --inductor-options was picked from the group-norm run: persistent reductions off)
        "gpu_render_options",
        "--out $OUT/gpu_render_options_builds.json --sections timeline,inductor-options --jobs view --repeats 3 "
        "--inductor-options triton.persistent_reductions=False",
        {
            "sections": "timeline,inductor-options",
            "jobs": "view",
            "inductor_options": "triton.persistent_reductions=False",
        },
    ),
    (  # session 22's runs: the split group norms (then the split build's name, its shipped build inductor's) ...
        "gpu_render_options",
        "--out $OUT/gpu_render_options_split_gn.json --sections group-norm,split-group-norm --jobs view,live --repeats 3",
        {"sections": "group-norm,split-group-norm", "jobs": "view,live"},
    ),
    (  # ... inductor's tuned block sizes (the default --inductor-options) ...
        "gpu_render_options",
        "--out $OUT/gpu_render_options_tuned.json --sections inductor-options --jobs view --repeats 3",
        {
            "sections": "inductor-options",
            "inductor_options": "coordinate_descent_tuning=True,max_autotune_pointwise=True",
        },
    ),
    (  # ... and the server with each group norm (VIEWNETI_GROUP_NORM=split / native in front)
        "server_gpu",
        "--out benchmarks/server_gpu_split_gn.json --work /tmp/w --repeats 6 --compile-processes 3 --busy-s 30",
        {"repeats": 6, "compile_processes": 3, "busy_s": 30.0},
    ),
    (  # session 23 (H100): frames per UNet call for sequences (the engine's sequence_batch) ...
        "gpu_render_options",
        "--out $OUT/gpu_render_options_sequence_batch.json --sections sequence-batch --jobs view --repeats 3",
        {"sections": "sequence-batch", "jobs": "view", "sequence_batches": [1, 4, 8]},
    ),
    (  # session 23 (H100): the server with 8 frames a UNet call, cut by its call's limit ...
        "server_gpu",
        "--out $OUT/server_gpu_seq8.json --work /tmp/w --repeats 6 --compile-processes 3 --busy-s 30",
        {"repeats": 6, "compile_processes": 3, "busy_s": 30.0, "frames": 24},
    ),
    (  # ... and on the CPU, live renders while a sequence renders (here and on e56d5f3's server)
        "server_gpu",
        "--smoke --frames 24 --repeats 3 --out /tmp/cmp2_after.json",
        {"smoke": True, "frames": 24, "repeats": 3},
    ),
    (  # ... and the build that shipped before session 22, against today's shipped one
        "gpu_render_options",
        "--out $OUT/gpu_render_options_native_gn.json --sections native-group-norm --jobs view,live --repeats 3",
        {"sections": "native-group-norm", "jobs": "view,live", "repeats": 3},
    ),
]


@pytest.mark.parametrize("script,argv,values", RESULTS_COMMANDS, ids=lambda v: v if isinstance(v, str) else "")
def test_the_results_commands_parse_to_what_they_ask(script, argv, values):
    module = importlib.import_module(f"benchmarks.{script}")
    parsed = vars(module.build_parser().parse_args(shlex.split(argv)))
    assert {name: parsed[name] for name in values} == values
