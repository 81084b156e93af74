"""Assemble the studio's tabs into one Gradio page and serve it on loopback, offline."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from fieldstudio.errors import ConfigError

from .common import Studio
from .jobs import JobManager

#: tab modules in page order; a module whose pipeline is missing (ImportError) is left out
TABS = ("tab_image", "tab_sdf", "tab_scene", "tab_geo", "tab_video", "tab_distill", "tab_jobs")

# gradio reads these at import: no usage analytics, no Hugging Face calls
_OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "GRADIO_SSR_MODE": "False"}


def available_tabs() -> list:
    mods = []
    for name in TABS:
        try:
            mods.append(importlib.import_module(f"{__package__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__package__}.{name}"):
                continue  # the tab itself does not exist (yet)
            if exc.name and exc.name.startswith("fieldstudio"):
                continue  # its pipeline is not part of this installation
            raise
    return mods


def build_app(studio: Studio):
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("the studio needs gradio, which is not installed",
                          'pip install -e ".[app]"') from None
    # system fonts: the default theme would make every browser fetch Google Fonts
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="fieldstudio", analytics_enabled=False) as demo:
        gr.Markdown("# fieldstudio\nFit, race and inspect neural fields. Long work runs in the background "
                    f"(at most {studio.manager.max_running} at once, {studio.manager.max_queued} waiting); "
                    f"uploads up to {studio.max_upload_mb:g} MB.")
        with gr.Tabs():
            for mod in available_tabs():
                with gr.Tab(mod.TITLE, id=mod.__name__.rsplit(".", 1)[1]):
                    mod.build(studio)
    demo.queue(default_concurrency_limit=8)
    return demo, theme


def serve(host: str = "127.0.0.1", port: int = 7860, *, max_jobs: int = 2, max_queued: int = 8,
          max_upload_mb: float = 200.0, workdir: str | Path | None = None, share: bool = False,
          block: bool = True):
    """Start the studio; returns gradio's ``(app, local_url, share_url)`` when ``block`` is False."""
    if max_jobs < 1:
        raise ConfigError(f"--max-jobs must be at least 1, got {max_jobs}", "e.g. --max-jobs 2")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}", "e.g. --max-upload-mb 200")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port", "use 1-65535, e.g. --port 7860")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fieldstudio-app-"))
    workdir.mkdir(parents=True, exist_ok=True)
    studio = Studio(JobManager(max_running=max_jobs, max_queued=max_queued), workdir.resolve(), max_upload_mb)
    demo, theme = build_app(studio)
    print(f"fieldstudio app: runs are written to {studio.workdir}", flush=True)
    try:
        return demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, theme=theme,
                           max_file_size=int(max_upload_mb * 1e6), allowed_paths=[str(studio.workdir)],
                           prevent_thread_lock=not block, ssr_mode=False, footer_links=[], quiet=False)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port} ({exc})", "choose another --port") from None
    finally:
        if block:
            studio.manager.shutdown()
