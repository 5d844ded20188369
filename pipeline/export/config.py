"""The export settings: the export stage's config, and the meshing defaults the eval stage uses
when it has to extract a mesh itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ExportConfig:
    method: str = "auto"  # auto (newest of W/nerf, W/idr, W/sdf) | nerf | idr | sdf
    what: str = "depth,views,mesh"  # comma-separated parts: depth, views, mesh, panoramas
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    chunk: int = 8192  # rays per rendering batch: bounds peak memory at any resolution

    # depth
    depth_split: str = "eval"  # eval (test, else val, else train) | train | val | test | all
    depth_max_views: int = 0  # 0 = every view of the split
    depth_resolution: float = 1.0  # factor applied to each view's resolution
    normals: bool = True  # also write normals when the model gives them
    opacity: bool = True  # also write accumulated opacity
    min_opacity: float = 0.5  # pixels below it have no surface (0 in the PNG, left out of the cloud)
    point_cloud: bool = True  # fuse the depth maps into points.ply
    fusion_min_views: int = 1  # other views that must confirm a point (0 = no check)
    fusion_tolerance: float = 0.01  # relative depth difference that counts as confirmation
    fusion_outlier_k: int = 16  # neighbours of the statistical outlier filter (0 = off)
    fusion_outlier_std: float = 2.0
    fusion_voxel: float = 0.0  # voxel size in ORIGINAL units to average points in (0 = keep all)

    # novel views
    path: str = "orbit"  # orbit | spiral (forward-facing scenes) | smooth (through training cameras) | file
    path_file: str = ""  # nerfstudio camera_path.json for path=file
    frames: int = 48
    width: int = 0  # 0 = the first training camera's width
    height: int = 0  # 0 = the first training camera's height (or width * its aspect)
    fov_deg: float = 0.0  # vertical field of view; 0 = the first training camera's
    fps: int = 24
    orbit_radius: Optional[float] = None  # ORIGINAL units; None = median training camera distance
    orbit_elevation_deg: Optional[float] = None  # None = median training camera elevation
    smooth_keyframes: int = 12  # training cameras the smooth path passes through (0 = all)
    video: bool = True
    save_frames: bool = True  # PNG per frame
    view_depth: bool = False  # also write raw depth (.npy) per path frame
    # colour averaged over k x k rays per pixel (anti-aliased edges; costs k^2 renders; depth stays
    # the pixel centre's); 1 = one ray through each pixel's centre
    supersample: int = 1

    # panoramas (what=panoramas; pipeline/export/panoramas.py)
    between: str = ""  # "a,b": two panorama stems; `steps` new panoramas from a's centre to b's (ends included)
    steps: int = 5  # panoramas of `between`; poses per median segment of the walk
    at: str = ""  # "x,y,z[;x,y,z]": centres in ORIGINAL units, oriented as the nearest panorama
    walk_order: str = "nearest"  # the walk through all panoramas (no between/at): nearest | capture
    panorama_width: int = 0  # equirect width of the rendered panoramas (height = width / 2); 0 = the scene's
    walk_view_width: int = 640  # the walk's forward-looking perspective view (16:9)
    walk_fov_deg: float = 60.0  # its vertical field of view

    # mesh
    mesh_resolution: int = 256  # marching cubes grid per axis
    mesh_bounds: list[float] = field(default_factory=list)  # xmin ymin zmin xmax ymax zmax, ORIGINAL units;
    # empty = the scene bounds (else the model's, else the normalised cube [-1, 1]^3)
    density_threshold: float = 25.0  # NeRF iso-level of sigma (1 / normalised unit): a layer 1/25
    # thick absorbs 63% of light; lower it for fuzzy surfaces, raise it to shed haze
    carve_min_views: int = 1  # NeRF: density is kept only where this many training cameras see it
    min_component_fraction: float = 0.01  # drop mesh pieces with fewer faces than this fraction
    cull_hidden: bool = True  # NeRF: drop faces no training view sees as its first surface (the inside of solids)
    # voxels behind a view's rendered depth that still count as seen; raise it when a pixel spans
    # several mesh voxels (coarse images, fine mesh) or the density is soft, else culling trims
    # grazing parts of the true surface
    cull_tolerance: float = 2.0
    mesh_colors: bool = True  # vertex colours from the radiance field, viewed along the normal
    obj: bool = True  # also write mesh.obj
