# Blender's bpy is a compiled module whose API (bpy.context, bpy.data, bpy.ops, bpy.types, ...) is built at
# run time from RNA: the checker cannot see it, so every attribute is Any (pyright reads this stub, Python never).
from typing import Any

def __getattr__(name: str) -> Any: ...
