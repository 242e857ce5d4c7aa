"""Ready lessons: each a JSON file under assets/lessons/, registered by its file name.

A lesson is a title, a few sentences of what to notice, when it becomes striking, and the link
settings that open it (the same keys a URL carries, see url_state.py). A teacher adds a lesson by
adding a file; no Python changes. The Lessons tab lists them with their links.

    {"title": "...", "order": 1, "notice": "...", "striking": "...",
     "settings": {"dataset": "digits", "method": "dm", "ipc": 10, "init": "noise",
                  "hide": ["seed", "params"], "autorun": true}}
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dd_core.registry import Registry

from . import url_state

LESSON_DIR = Path(__file__).resolve().parent.parent / "assets" / "lessons"
log = logging.getLogger("distillery.app")


@dataclass(frozen=True)
class Lesson:
    """One ready lesson, as its file describes it."""

    name: str  # the file name without .json; `?lesson=<name>` opens it
    title: str
    notice: str  # two or three sentences: what to notice
    striking: str  # the moment it shows what it teaches, e.g. "by step 200 (about 20 s)"
    settings: dict  # URL keys -> values (lists for hide, true for autorun)
    order: int = 99

    def query(self) -> str:
        """The full link's query string: every setting spelled out, so the link reads on its own."""
        s = dict(self.settings)
        values = {k: s.pop(k) for k in url_state.CORE if k in s}
        tab, hide, compare = s.pop("tab", None), s.pop("hide", ()), s.pop("compare", None)
        autorun, paused = bool(s.pop("autorun", False)), bool(s.pop("paused", False))
        return url_state.to_query(values, s, tab=tab, hide=hide, autorun=autorun, paused=paused, compare=compare)


class LessonError(ValueError):
    """A lesson file that cannot be used; the message names the file and what to fix."""


def read_lesson(path: Path) -> Lesson:
    """One lesson file, checked: the same checks a link gets, but a bad value is an error here."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LessonError(f"{path.name}: not readable JSON ({err})") from None
    missing = [k for k in ("title", "notice", "settings") if k not in data]
    if missing:
        raise LessonError(f"{path.name}: missing {', '.join(missing)}; a lesson needs title, notice and settings")
    settings = data["settings"]
    if not isinstance(settings, dict):
        raise LessonError(f"{path.name}: settings must be an object of link keys")
    checked = url_state.parse({k: url_state._text(v) for k, v in settings.items()})
    if checked.notes:
        raise LessonError(f"{path.name}: {' '.join(checked.notes)}")
    return Lesson(path.stem, str(data["title"]), str(data["notice"]), str(data.get("striking", "")),
                  dict(settings), int(data.get("order", 99)))


def load_lessons(folder: Path = LESSON_DIR) -> Registry[Lesson]:
    """Every readable lesson in `folder`; a broken file is logged and left out, never fatal."""
    registry: Registry[Lesson] = Registry("lesson")
    for path in sorted(folder.glob("*.json")):
        try:
            lesson = read_lesson(path)
        except LessonError as err:
            log.warning("lesson left out: %s", err)
            continue
        registry.register(lesson.name)(lesson)
    return registry


LESSONS = load_lessons()


def ordered(registry: Registry[Lesson] = LESSONS) -> list[Lesson]:
    return sorted((registry.get(n) for n in registry.names()), key=lambda lesson: (lesson.order, lesson.name))


def settings_by_name(registry: Registry[Lesson] = LESSONS) -> dict[str, dict]:
    """What url_state.parse needs to expand `lesson=<name>`."""
    return {n: registry.get(n).settings for n in registry.names()}


def gallery_markdown(registry: Registry[Lesson] = LESSONS) -> str:
    """The Lessons tab: a card per lesson with its link (relative, so it works on any host)."""
    parts = ["Each lesson opens the app set up for one idea and starts it. Share the link with a class; "
             "**Copy link** on the Distill tab gives a link to whatever you have set up yourself. "
             "To add a lesson, add a JSON file to `assets/lessons/`."]
    for lesson in ordered(registry):
        when = f"  \n*When to look:* {lesson.striking}" if lesson.striking else ""
        parts.append(f"### {lesson.order}. {lesson.title}\n{lesson.notice}{when}  \n"
                     f"[Open this lesson](?{lesson.query()}) · short link: `?lesson={lesson.name}`")
    return "\n\n".join(parts)
