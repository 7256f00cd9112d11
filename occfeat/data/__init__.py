"""Reading nuScenes-format data (through nuscenes-devkit) and the offline caches built from it."""
