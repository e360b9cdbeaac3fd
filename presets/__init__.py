"""Built-in presets, shipped inside the package as `cifartui.preset_files`."""
