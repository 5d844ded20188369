"""Training pixels in bounded memory (``pipeline.training.pixel_store``): stored uint8, sampled as
the same float colours as the float loaders give, memory-mapped tables that draw the same batches
as in-memory ones, masks kept at one byte per pixel."""
import numpy as np
import pytest
import torch

from pipeline.training.nerf_data import PixelData
from pipeline.training.pixel_store import PixelStore, build_store, memory_budget_bytes, quantize_uint8
from tests.scenes import write_ball_workspace

TINY_GB = 1e-6  # ~1 kB: every test table is larger, so it is memory-mapped


def _float_pixels(scene, idx, data, pixels, use_alpha):
    """The float colours (n, C) of flat ``pixels`` of ``data`` read from the float loaders."""
    view = torch.searchsorted(data.offsets, pixels, right=True) - 1
    local = pixels - data.offsets[view]
    out = []
    for v, p in zip(view.tolist(), local.tolist()):
        img = scene.load_rgba(idx[v]) if use_alpha else scene.load_image(idx[v])
        out.append(img.reshape(-1, img.shape[-1])[p])
    return torch.from_numpy(np.stack(out))


def test_quantization_is_exact_for_8_bit_levels():
    levels = np.arange(256, dtype=np.uint8)
    as_float = levels.astype(np.float32) / 255.0  # what load_image_file gives 8-bit images
    assert np.array_equal(quantize_uint8(as_float), levels)
    assert quantize_uint8(np.array([-0.2, 1.7, 0.5 / 255 + 1e-4], np.float32)).tolist() == [0, 255, 1]
    with pytest.raises(ValueError, match="data_memory_gb"):
        memory_budget_bytes(-1)
    assert memory_budget_bytes(0) > 0 and memory_budget_bytes(0.5) == 1 << 29


def test_nerf_pixels_are_uint8_and_sample_the_float_colours(tmp_path):
    scene = write_ball_workspace(tmp_path).load_scene()
    idx = scene.split("train")
    for use_alpha in (True, False):
        data = PixelData(scene, idx, "cpu", use_alpha)
        channels = 4 if use_alpha else 3
        assert data.colors.dtype == torch.uint8 and data.colors.shape == (data.num_pixels, channels)
        assert data.pixel_bytes == data.colors.numel() * data.colors.element_size() == data.num_pixels * channels
        assert not data.memory_mapped
        _, _, colors, pixels = data.sample(500, torch.Generator().manual_seed(1))
        assert colors.dtype == torch.float32
        expected = _float_pixels(scene, idx, data, pixels, use_alpha)
        if use_alpha:  # 8-bit RGBA: bit for bit the float loader's values
            assert torch.equal(colors, expected)
        else:  # composited onto the background in float, then rounded to 8 bits
            assert float((colors - expected).abs().max()) <= 0.5 / 255 + 1e-6
    data.enable_error_map(0.5)
    assert data.pixel_error.dtype == torch.float16  # 2 B per pixel


def test_memory_mapped_nerf_pixels_draw_the_same_batches(tmp_path):
    scene = write_ball_workspace(tmp_path).load_scene()
    idx = scene.split("train")
    ram = PixelData(scene, idx, "cpu", True, edge_fraction=0.3)
    mapped = PixelData(scene, idx, "cpu", True, edge_fraction=0.3, memory_gb=TINY_GB, cache_dir=tmp_path / "cache")
    assert mapped.memory_mapped and isinstance(mapped.colors, np.memmap) and mapped.colors.dtype == np.uint8
    assert mapped.store.cache_path.parent == tmp_path / "cache"
    assert torch.equal(ram.edge_pixels, mapped.edge_pixels)
    batches = [d.sample(300, torch.Generator().manual_seed(3)) for d in (ram, mapped)]
    assert all(torch.equal(a, b) for a, b in zip(*batches))

    def no_decoding(i):
        raise AssertionError("the cached table should have been reused")

    scene.load_rgba = no_decoding  # a second run maps the cache without decoding an image
    again = PixelData(scene, idx, "cpu", True, edge_fraction=0.3, memory_gb=TINY_GB, cache_dir=tmp_path / "cache")
    assert again.store.cache_path == mapped.store.cache_path
    assert torch.equal(again.sample(50, torch.Generator().manual_seed(4))[2],
                       ram.sample(50, torch.Generator().manual_seed(4))[2])


def test_a_store_is_laid_out_again_when_an_image_has_another_size():
    images = [np.full((2, 3, 3), 7, np.uint8), np.full((4, 1, 3), 9, np.uint8)]
    store = build_store([(2, 3), (2, 3)], 3, lambda v: images[v], budget_bytes=1 << 20)
    assert store.sizes == [(2, 3), (4, 1)] and store.num_pixels == 10
    assert np.array_equal(store.view(1), images[1])
    mapped = PixelStore(store.sizes, 3, lambda v: images[v], budget_bytes=0)
    assert mapped.mapped and np.array_equal(mapped.array, store.array)
    assert torch.equal(mapped.gather(torch.tensor([9, 0])), store.gather(torch.tensor([9, 0])))


def test_idr_and_sdf_views_store_uint8_pixels_and_one_byte_masks(sphere_workspace, tmp_path):
    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.sdf_data import PixelRays

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    masks = load_masks(scene, idx, MaskOptions())
    views = load_views(scene, idx, masks, 1)
    assert views.store.array.dtype == np.uint8 and views.store.nbytes == views.store.num_pixels * 3
    assert views.mask_flat.dtype == np.bool_ and views.mask_flat.itemsize == 1
    assert all(m.dtype == np.bool_ and np.shares_memory(m, views.mask_flat) for m in views.masks)
    assert np.array_equal(views.images[1], scene.load_image(idx[1]))  # float on access, bit for bit

    mapped = load_views(scene, idx, masks, 1, memory_gb=TINY_GB, cache_dir=tmp_path / "cache")
    assert mapped.store.mapped and isinstance(mapped.store.array, np.memmap)
    for make in (lambda v: RayBank(v, 1.0, mask_fraction=0.5, edge_fraction=0.2), PixelRays):
        a = make(views).sample(400, torch.Generator().manual_seed(5))
        b = make(mapped).sample(400, torch.Generator().manual_seed(5))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        view, uv, rgb, mask = a
        assert rgb.dtype == torch.float32 and mask.dtype == torch.bool
        col, row = uv[:, 0].long(), uv[:, 1].long()  # uv are pixel centres (+0.5)
        for k in range(0, 400, 37):  # each ray's colour and mask are its pixel's
            v = int(view[k])
            assert torch.equal(rgb[k], torch.from_numpy(scene.load_image(idx[v])[row[k], col[k]]))
            assert bool(mask[k]) == bool(views.masks[v][row[k], col[k]])


def test_downscaled_idr_views_round_the_area_average_to_8_bits(sphere_workspace):
    from pipeline.training.idr_data import MaskOptions, downscale_view, load_masks, load_views

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")[:2]
    masks = load_masks(scene, idx, MaskOptions())
    views = load_views(scene, idx, masks, 2)
    img, mask, k = downscale_view(scene.load_image(idx[0]), masks[0], scene.frames[idx[0]].intrinsics, 2)
    assert views.images[0].shape == img.shape and np.abs(views.images[0] - img).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(views.masks[0], mask) and int(views.cameras.width[0]) == k.width
    assert float(views.cameras.fx[0]) == pytest.approx(k.fx)
