"""Developer tools: Blender/Cycles reference renders for tests, benchmarks and demos.

Not part of the add-on or the backend; needs the ``blender`` extra (``bpy``).
"""
