# bpy.props is built at run time by Blender (see bpy/__init__.pyi): every attribute is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
