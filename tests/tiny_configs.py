"""Tiny configs of the training stages, sized for a few seconds on a CPU, and the NeRF model of
such a config."""
from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.nerf import io as nerf_io
from pipeline.models.nerf.model import NeRFModelConfig

TINY_GRID = HashGridConfig(levels=6, features_per_level=2, log2_table_size=12, base_resolution=4,
                           finest_resolution=64, backend="torch")


def tiny_nerf_config(**overrides):
    from stages.nerf import NerfConfig

    cfg = NerfConfig(model=NeRFModelConfig(grid=TINY_GRID, width=16, occupancy_resolution=8, march_steps=32))
    cfg.samples_per_batch, cfg.initial_rays, cfg.max_time_s, cfg.max_steps = 2048, 128, 0.0, 8
    cfg.occupancy_warmup_steps, cfg.occupancy_update_every, cfg.checkpoint_every = 4, 2, 3
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_nerf_model(cfg, aabb):
    """The model of a NeRF stage config for a scene with a white background."""
    return nerf_io.build_model(cfg.model, aabb, "white", cfg.background)


def tiny_idr_config(**overrides):
    from pipeline.runner.config import load_config
    from stages.idr import IDRConfig

    base = ["max_steps=25", "batch_rays=256", "eikonal_points=64", "mesh_resolution=32", "sdf.hidden_dim=32",
            "sdf.feature_dim=8", "sdf.init_radius=0.4", "renderer.hidden_dim=32", "tracing.steps=8",
            "tracing.samples=16"]
    return load_config(IDRConfig, None, base + [f"{k}={v}" for k, v in overrides.items()])


# a tiny hash-grid model: ~60 ms a step on one thread of a busy 2-core CPU
TINY_SDF = ["sdf.hash_levels=6", "sdf.hash_log2_size=12", "sdf.hash_base_resolution=4", "sdf.hash_max_resolution=64",
            "sdf.hidden_dim=32", "sdf.feature_dim=8", "sdf.init_radius=0.4", "renderer.hidden_dim=32",
            "sampling.samples=16", "sampling.importance=16", "sampling.upsample_steps=2", "background_field.samples=8",
            "background_field.width=32", "batch_rays=64", "eikonal_points=64", "mesh_resolution=32",
            "warmup_steps=10", "cpu_threads=1"]


def tiny_sdf_config(*overrides: str):
    from pipeline.runner.config import load_config
    from stages.sdf import SDFStageConfig

    return load_config(SDFStageConfig, None, TINY_SDF + list(overrides))
