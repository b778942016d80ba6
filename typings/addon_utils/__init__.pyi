# addon_utils is a module of Blender's bundled scripts (on sys.path only inside Blender / bpy): every attribute is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
