# mathutils is compiled into Blender / the bpy module and ships no stubs: every attribute is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
