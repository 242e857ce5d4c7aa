"""Label stores: every way of giving a training target to a synthetic image, in one currency.

A store answers `targets(idx, views, epoch) -> (n, classes)` probability rows for the synthetic
images `idx` seen as the (possibly augmented) `views` in evaluation epoch `epoch`, and reports
the exact bytes needed to reproduce those targets. One soft cross-entropy trains on all of them.

Every store is built by its registered class's `build(syn, dataset, teacher, config, **options)`
and travels inside the synthetic-set file: tensors named `label_store.<key>` in
`SyntheticSet.extra` and strings named the same way in `SyntheticSet.extra_meta`, with
`extra_meta["label_store"]` naming the store. The stores beyond hard labels live in
`label_stores/`, one file per family.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch

from .convert import from_text
from .label_stores.base import LABEL_STORES, HardLabels, LabelStore, TeacherRequired

PREFIX = "label_store."


def images_digest(images: torch.Tensor) -> str:
    """A short fingerprint of the images a store labelled, to catch a store kept after the images changed."""
    return hashlib.sha1(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


# -- building from a spec ------------------------------------------------------------------------


class LabelSpec(NamedTuple):
    """A label store named with its options, parsed and checked once at the boundary (CLI, app) and
    then passed along as is: ('soft', {'dtype': 'int8', 'topk': 2})."""

    name: str
    options: dict[str, object]

    def __str__(self) -> str:  # the canonical text, as store.spec records it
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) if self.options else "")


def parse_spec(spec: str | LabelSpec) -> LabelSpec:
    """'soft:dtype=int8,topk=2' -> ('soft', {'dtype': 'int8', 'topk': 2}), typed by the store's defaults.
    A spec already parsed is returned as it is."""
    if isinstance(spec, LabelSpec):
        return spec
    name, _, rest = spec.strip().partition(":")
    cls = LABEL_STORES.get(name)
    options: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"label store option {item!r} in {spec!r} must be written key=value")
        if key not in cls.OPTIONS:
            valid = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ValueError(f"label store {cls.name!r} has no option {key!r}; its options are: {valid}")
        options[key] = from_text(value, cls.OPTIONS[key][0], f"option {key!r} of label store {cls.name!r}")
    return LabelSpec(name, options)


def build(name: str, syn, dataset, teacher, config, **options) -> LabelStore:
    """Build the registered store `name` for the synthetic set `syn` (labels as in `syn.labels`)."""
    cls = LABEL_STORES.get(name)
    for key in options:
        if key not in cls.OPTIONS:
            raise ValueError(f"label store {name!r} has no option {key!r}; its options are: "
                             f"{', '.join(sorted(cls.OPTIONS)) or 'none'}")
    if cls.needs_teacher and teacher is None:
        raise TeacherRequired(f"label store {name!r} needs a teacher network trained on the real training set "
                              f"of {syn.dataset}, and none is available; use 'hard' labels instead")
    store = cls.build(syn, dataset, teacher, config, **options)
    if teacher is not None and cls.needs_teacher:
        store.teacher_note = teacher.describe()
    store.spec = str(LabelSpec(name, options))
    return store


def build_spec(spec: str | LabelSpec, syn, dataset, teacher, config) -> LabelStore:
    name, options = parse_spec(spec)
    return build(name, syn, dataset, teacher, config, **options)


# -- inside the synthetic-set file ----------------------------------------------------------------


def attach(syn, store: LabelStore) -> None:
    """Put `store` into `syn` (replacing any store there), so saving the set saves the store."""
    for key in [k for k in syn.extra if k.startswith(PREFIX)]:
        del syn.extra[key]
    for key in [k for k in syn.extra_meta if k == "label_store" or k.startswith(PREFIX)]:
        del syn.extra_meta[key]
    tensors, meta = store.state()
    syn.extra.update({PREFIX + k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    syn.extra_meta.update({PREFIX + k: str(v) for k, v in meta.items()})
    syn.extra_meta["label_store"] = store.name
    syn.extra_meta[PREFIX + "images"] = images_digest(syn.images)
    syn.extra_meta[PREFIX + "spec"] = store.spec
    if store.teacher_note:
        syn.extra_meta[PREFIX + "teacher"] = store.teacher_note


def load_store(syn) -> LabelStore:
    """The store saved inside `syn`, or its hard labels when it carries none."""
    name = syn.extra_meta.get("label_store")
    if name is None:
        return HardLabels(syn.labels, syn.num_classes)
    digest = syn.extra_meta.get(PREFIX + "images")
    if digest is not None and digest != images_digest(syn.images):
        raise ValueError(f"the {name!r} label store in this file was made for other images (they changed "
                         f"after labelling); rebuild it for the current images")
    cls = LABEL_STORES.get(name)
    tensors = {k[len(PREFIX):]: v for k, v in syn.extra.items() if k.startswith(PREFIX)}
    meta = {k[len(PREFIX):]: v for k, v in syn.extra_meta.items() if k.startswith(PREFIX)}
    try:
        store = cls.from_state(tensors, meta, syn)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:  # parts missing or malformed
        have = ", ".join(sorted(tensors)) or "none"
        raise ValueError(f"this file names a {name!r} label store but its saved parts are missing or malformed "
                         f"({type(err).__name__}: {str(err)[:120]}; tensors present: {have}); save the set "
                         f"again with its labels, or remove the label_store entry to use hard labels") from None
    store.teacher_note = meta.get("teacher", "")
    store.spec = meta.get("spec", name)  # files from before specs were saved: the default options
    return store


def same_kind(store: LabelStore, syn, dataset, teacher, config) -> LabelStore:
    """A store built like `store` (same name and options) for other images `syn`: what the random
    subset needs so that IOR compares like with like (DD-Ranking: same label type on both sides)."""
    if isinstance(store, HardLabels):
        return HardLabels(syn.labels, syn.num_classes)
    return build_spec(store.spec, syn, dataset, teacher, config)

