"""Learn tab: what each method matches and why, in our own words, with its paper.

Texts live in assets/<method>.md (one per registered method). A method without one falls back
to its class docstring and `paper` attribute, so a newly registered method is never blank.
"""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from dd_core.methods import METHODS

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASELINES = ("rs2",)  # baselines with a page of their own in assets/, listed after the methods


@functools.lru_cache(maxsize=None)
def method_markdown(name: str) -> str:
    """The explanation of a registered method, from assets/ or from the class itself."""
    path = ASSETS / f"{name}.md"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    try:
        cls = METHODS.get(name)
    except KeyError:
        return f"*No method named {name!r}.*"
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    paper = getattr(cls, "paper", "") or "no paper recorded"
    family = getattr(cls, "family", "")
    lines = [f"### {name}", "", doc or "(no description yet)", ""]
    if family:
        lines.append(f"**Family:** {family}  ")
    lines.append(f"**Paper:** {paper}")
    return "\n".join(lines)


def build(default: str) -> None:
    """The Learn tab's widgets, inside the caller's gr.Tab."""
    names = METHODS.names() + list(BASELINES)
    gr.Markdown("Dataset distillation makes a tiny synthetic training set that trains a network almost as "
                "well as the whole real dataset. Each method below decides *what* about the real data the "
                "synthetic images must reproduce. Pick one to read what it matches and why.")
    with gr.Row():
        with gr.Column(scale=1, min_width=200):
            choice = gr.Radio(names, value=default if default in names else names[0], label="Method",
                              elem_id="learn-method")
        with gr.Column(scale=3):
            text = gr.Markdown(method_markdown(default if default in names else names[0]), elem_id="learn-text")
    choice.change(method_markdown, inputs=choice, outputs=text, queue=False, api_visibility="private")
