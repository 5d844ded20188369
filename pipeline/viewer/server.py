"""``run.py view``: a viser server showing a workspace, and each browser's own render of the field.

The scene (cameras with their images, sparse points, mesh) is the same for every browser
(``scene.py``, normalised frame); the trained field is rendered per browser from its own camera,
progressively (``render.py``), and shown as that browser's background image with its depth, so
frusta and points in front of the object hide it and those behind it are hidden. Renders of all
browsers share one lock: on a CPU one render at a time is the fastest way to all of them.
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from pipeline.runner.log import get_logger
from pipeline.runner.runtime import torch_threads
from pipeline.runner.workspace import Workspace, WorkspaceError
from pipeline.viewer.camera import c2w_to_viser
from pipeline.viewer.render import LEVELS, PREVIEW_STEP_SCALE, ProgressiveRenderer, View, render_view
from pipeline.viewer.scene import add_nodes, initial_view, load_content

# torch CPU threads per render: the browser showing the viewer usually shares the CPU, and there one
# thread renders a 128-px preview 5-10x faster than two (which wait on each other at OpenMP
# barriers: measured 0.08 s vs 0.36-0.98 s on the 2-core development machine under load)
RENDER_THREADS = 1
SHARPEST = (128, 192, 256, 384, 512, 1024)  # choices of the last refinement level, longer side in pixels
CUDA_LEVELS = (128, 256, 512)  # a GPU renders these as fast as a CPU the default LEVELS (not measured yet)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WorkspaceError("device=cuda but no CUDA GPU is available; use --device cpu (or auto)")
    return torch.device(device)


class Viewer:
    """A running viewer of ``workspace``. ``stats`` counts connected browsers and renders sent."""

    def __init__(self, workspace, host: str = "127.0.0.1", port: int = 8080, device: str = "auto",
                 method: str = "auto", levels=LEVELS, thumbnails: bool = True, threads: int = RENDER_THREADS):
        import viser

        self.log = get_logger("view")
        self.workspace = Workspace(workspace, create=False)
        self.content = load_content(self.workspace, thumbnails)
        self.device = resolve_device(device)
        self.levels = CUDA_LEVELS if self.device.type == "cuda" and tuple(levels) == LEVELS else tuple(levels)
        self.threads = threads
        if method != "auto" and method not in self.content.methods:
            raise WorkspaceError(f"{self.workspace.root} has no completed {method} run; trained here: "
                                 f"{', '.join(self.content.methods) or 'none'}")
        if method == "auto":  # the newest trained field, or none
            method = self.content.methods[0] if self.content.methods else None
        self.method = method
        self._models: dict[str, object] = {}
        self._render_lock = threading.Lock()
        self._lock = threading.Lock()
        self._renderers: dict[int, ProgressiveRenderer] = {}
        self.stats = {"connected": 0, "clients": set(), "previews": 0, "previews_by_client": {},
                      "render_s": {}, "errors": [],
                      "views": {}}  # the last camera of each browser
        if self.method is not None:
            self._load(self.method)
        self.server = viser.ViserServer(host=host, port=port, label="recon", verbose=False)
        self.nodes = add_nodes(self.server, self.content, show_mesh=self.method is None)
        initial_view(self.server, self.content)
        self._add_camera_clicks()
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    # --- the field ----------------------------------------------------------------------------

    def _load(self, method: str):
        from pipeline.export.methods import load_model

        if method not in self._models:
            t0 = time.perf_counter()
            try:
                self._models[method] = load_model(self.workspace, method, self.device)
            except Exception as exc:  # a broken model file: show the rest, say why the field is missing
                self._models[method] = None
                self.content.notes.append(f"{method}: cannot load the model ({' '.join(str(exc).split())})")
                self.log.warning(f"view: cannot load the {method} model: {exc}")
            else:
                self.log.info(f"view: {method} model loaded on {self.device} in {time.perf_counter() - t0:.1f}s")
        return self._models[method]

    def render(self, view: View, long_side: int, cancelled=None) -> Optional[dict]:
        """The current field from ``view`` (None when there is none, it is switched off, or cancelled)."""
        if self.method is None or not self.gui["field"].value:
            return None
        with self._render_lock:
            model = self._load(self.method)
            if model is None or (cancelled is not None and cancelled()):
                return None
            preview = long_side < self._levels()[-1]  # the sharpest level gets the model's full quality
            with torch_threads(self.threads):
                return render_view(model, view, long_side, self.device, cancelled,
                                   step_scale=PREVIEW_STEP_SCALE if preview else 1.0)

    # --- browsers ---------------------------------------------------------------------------

    def _levels(self) -> tuple[int, ...]:
        sharpest = int(self.gui["sharpest"].value) if "sharpest" in self.gui else self.levels[-1]
        return tuple(x for x in self.levels if x < sharpest) + (sharpest,)

    def _on_connect(self, client) -> None:
        cid = client.client_id

        def show(image, long_side, seconds, error=None):
            if error is not None:
                self.log.warning(f"view: render for browser {cid} failed: {error}")
                with self._lock:
                    self.stats["errors"].append(error)
                return
            client.scene.set_background_image(image["rgb"], format="jpeg", jpeg_quality=90, depth=image["depth"])
            with self._lock:
                first = cid not in self.stats["previews_by_client"]
                self.stats["previews"] += 1
                self.stats["previews_by_client"][cid] = self.stats["previews_by_client"].get(cid, 0) + 1
                self.stats["render_s"].setdefault(long_side, []).append(seconds)
            if first:
                h, w = image["rgb"].shape[:2]
                self.log.info(f"view: first render for browser {cid}: {w}x{h} in {seconds:.2f}s")
            if "status" in self.gui:
                h, w = image["rgb"].shape[:2]
                self.gui["status"].content = f"last render: {w}x{h} in {seconds * 1000:.0f} ms"

        renderer = ProgressiveRenderer(self.render, show, self._levels(), name=f"viewer-render-{cid}")
        with self._lock:
            self._renderers[cid] = renderer
            self.stats["connected"] += 1
            self.stats["clients"].add(cid)
        self.log.info(f"view: browser {cid} connected")

        def moved(camera):
            view = View.of(camera)
            with self._lock:
                self.stats["views"][cid] = view
            renderer.update(view)

        client.camera.on_update(moved)
        moved(client.camera)

    def _on_disconnect(self, client) -> None:
        with self._lock:
            renderer = self._renderers.pop(client.client_id, None)
            self.stats["clients"].discard(client.client_id)
        if renderer is not None:
            renderer.close(timeout=0)

    def _rerender_all(self) -> None:
        with self._lock:
            renderers = list(self._renderers.values())
        for r in renderers:
            r.levels = self._levels()
            r.update()

    # --- controls ---------------------------------------------------------------------------

    def _add_camera_clicks(self) -> None:
        """Clicking a camera's frustum moves the browser's camera there, with its field of view."""
        for cam in self.content.cameras:
            handle = self.nodes.get(f"/cameras/{cam.name}")
            if handle is None:
                continue

            handle.on_click(lambda event, cam=cam: self.look_through(event.client, cam))

    @staticmethod
    def look_through(client, cam) -> None:
        """Move a browser's camera to ``cam`` (a :class:`scene.Camera`), with its field of view."""
        wxyz, position = c2w_to_viser(cam.c2w)
        with client.atomic():
            client.camera.wxyz = wxyz
            client.camera.position = position
            client.camera.fov = cam.fov_y

    def _build_gui(self) -> None:
        gui, c = self.server.gui, self.content
        self.gui: dict = {}
        lines = [f"**{c.root.name}** (normalised frame of `poses/transforms.json`)",
                 f"{len(c.cameras)} cameras (blue: training, orange: test; click one to look through it)"]
        if c.points is not None:
            lines.append(f"{len(c.points[0])} sparse points")
        if c.mesh is not None:
            lines.append(f"mesh: `{c.mesh_source}`")
        lines += [f"- {note}" for note in c.notes]
        gui.add_markdown("  \n".join(lines))

        def toggler(prefix):
            def toggle(event):
                for name, handle in self.nodes.items():
                    if name == prefix or name.startswith(prefix + "/"):
                        handle.visible = event.target.value
            return toggle

        for label, prefix, initial in (("Cameras", "/cameras", True), ("Sparse points", "/points", True),
                                       ("Mesh", "/mesh", self.method is None)):
            if any(n == prefix or n.startswith(prefix + "/") for n in self.nodes):
                box = gui.add_checkbox(label, initial)
                box.on_update(toggler(prefix))
        if self.method is not None:
            self.gui["field"] = gui.add_checkbox("Field render", True)
            self.gui["field"].on_update(self._field_toggled)
            if len(c.methods) > 1:
                self.gui["method"] = gui.add_dropdown("Field", c.methods, initial_value=self.method)
                self.gui["method"].on_update(self._method_changed)
            options = sorted(set(SHARPEST) | {self.levels[-1]})
            self.gui["sharpest"] = gui.add_dropdown("Sharpest render (px)", [str(x) for x in options],
                                                    initial_value=str(self.levels[-1]))
            self.gui["sharpest"].on_update(lambda _: self._rerender_all())
            self.gui["status"] = gui.add_markdown("waiting for a browser")
        else:
            self.gui["field"] = type("Off", (), {"value": False})()

    def _field_toggled(self, event) -> None:
        if event.target.value:
            self._rerender_all()
        else:
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)

    def _method_changed(self, event) -> None:
        self.method = event.target.value
        self._rerender_all()

    # --- life ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.server.get_port()

    def stop(self) -> None:
        with self._lock:
            renderers = list(self._renderers.values())
            self._renderers.clear()
        for r in renderers:
            r.close(timeout=1.0)
        self.server.stop()


def serve(workspace, host: str = "127.0.0.1", port: int = 8080, max_seconds: float = 0.0, device: str = "auto",
          method: str = "auto", threads: int = RENDER_THREADS) -> int:
    """Run the viewer until Ctrl-C (or for ``max_seconds`` when > 0, for tests). Returns 0."""
    viewer = Viewer(workspace, host=host, port=port, device=device, method=method, threads=threads)
    shown = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
    print(f"viewer: http://{shown}:{viewer.port} showing {viewer.workspace.root} "
          f"(field: {viewer.method or 'none'}; Ctrl-C stops)", flush=True)
    start = time.monotonic()
    try:
        while not max_seconds or time.monotonic() - start < max_seconds:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``view`` command's arguments (shared by run.py and ``python -m pipeline.viewer``)."""
    parser.add_argument("--workspace", required=True, help="the workspace folder")
    parser.add_argument("--port", type=int, default=8080, help="port (the next free one if taken; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: other machines too)")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop after this long (0: run until Ctrl-C)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda: where the field renders")
    parser.add_argument("--method", default="auto", help="the field to render: auto (newest) | nerf | idr | ...")
    parser.add_argument("--threads", type=int, default=RENDER_THREADS,
                        help=f"torch CPU threads per render (default {RENDER_THREADS}; 0: torch's default)")


def run_from_args(args: argparse.Namespace) -> int:
    return serve(Path(args.workspace), host=args.host, port=args.port, max_seconds=args.max_seconds,
                 device=args.device, method=args.method, threads=args.threads)


def main(argv=None) -> int:
    """``python -m pipeline.viewer --workspace W``: the same as ``run.py view``."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m pipeline.viewer", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except WorkspaceError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


__all__ = ["Viewer", "serve", "add_arguments", "run_from_args", "main"]
