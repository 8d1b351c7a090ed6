"""The bundle's Kaggle ids: user, competition, dataset and kernel slugs, checked against Kaggle's rules, and
the two metadata files (dataset-metadata.json, kernel-metadata.json) that name them."""

from __future__ import annotations

import os
import re
import sys

from pipeline.core.config import Competition
from pipeline.core.errors import DataError

DATASET_KEYS = {"title", "subtitle", "description", "id", "id_no", "licenses", "keywords", "collaborators",
                "data", "resources", "isPrivate"}
KERNEL_KEYS = {"id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
               "enable_tpu", "enable_internet", "dataset_sources", "competition_sources", "kernel_sources",
               "model_sources", "docker_image_pinning_type", "machine_shape"}
# `machine_shape` (MACHINE_SHAPE=): Kaggle's accelerator name, e.g. NvidiaTeslaT4 (GPU T4 x2) or TpuV5E8. The
# kaggle CLI passes it through unchecked, so only its form is checked here.
MACHINE_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,40}")
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?")  # Kaggle competition, dataset and kernel slugs
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}")
PLACEHOLDER_USER = "your-kaggle-username"


class PackageError(DataError):
    """The bundle cannot be made; the message says why."""


def warn(message: str) -> None:
    """A warning that stands out in a long log: on stderr, framed."""
    print(f"\n!!! warning: {message}\n", file=sys.stderr, flush=True)


def slugify(text: str, max_len: int = 50) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:max_len].strip("-")
    return s if len(s) >= 3 else (s + "-kfold").strip("-")


def check_id(value: str, pattern: re.Pattern, what: str, where: str) -> str:
    """A Kaggle slug or user name, refused unless it matches Kaggle's rules (it ends up in paths and metadata)."""
    if not pattern.fullmatch(value):
        rule = ("lowercase letters, digits and inner hyphens, at most 50" if pattern is SLUG
                else "letters, digits, '_' and '-', at most 50")
        raise PackageError(f"{what} {value!r} ({where}) is not valid on Kaggle: use {rule} characters")
    return value


def kaggle_ids(comp: Competition, user: str | None, competition: str | None, dataset: str | None,
               kernel: str | None) -> dict:
    """The Kaggle ids the bundle's metadata names. A fallback (no user given, the slug taken from the data
    folder's name) is warned about loudly: an upload with a wrong id fails, or lands somewhere else."""
    if not competition:
        warn(f"no competition slug given: using the data folder's name {comp.data_dir.resolve().name!r}. If that "
             "is not the competition's URL slug (kaggle.com/competitions/<slug>), the kernel will not see its data: "
             "make package COMPETITION_SLUG=<slug>")
    comp_slug = check_id(competition or comp.data_dir.resolve().name, SLUG, "competition slug",
                         "--competition-slug" if competition else "the data folder's name; set COMPETITION_SLUG=")
    user = user or os.environ.get("KAGGLE_USERNAME")
    if not user:
        warn(f"no Kaggle user given: the metadata says {PLACEHOLDER_USER!r}, which Kaggle refuses. "
             "make package KAGGLE_USER=<you> (or set $KAGGLE_USERNAME)")
    user = check_id(user or PLACEHOLDER_USER, USERNAME, "Kaggle user", "KAGGLE_USER / --kaggle-user / $KAGGLE_USERNAME")
    return {"user": user, "competition": comp_slug,
            "dataset": check_id(slugify(dataset or f"{comp_slug}-kfold-bundle"), SLUG, "dataset slug", "--dataset-slug"),
            "kernel": check_id(slugify(kernel or f"{comp_slug}-kfold-inference"), SLUG, "kernel slug", "--kernel-slug")}


def dataset_metadata(ids: dict) -> dict:
    return {"title": f"{ids['competition']} k-fold bundle"[:50], "id": f"{ids['user']}/{ids['dataset']}",
            "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(ids: dict, code_file: str, private: bool = True, machine_shape: str | None = None) -> dict:
    """enable_internet is always written: the kaggle CLI turns internet on when the key is missing."""
    meta = {"id": f"{ids['user']}/{ids['kernel']}", "title": ids["kernel"], "code_file": code_file,
            "language": "python", "kernel_type": "script", "is_private": private,
            "enable_gpu": not (machine_shape or "").startswith("Tpu"), "enable_internet": False,
            "dataset_sources": [f"{ids['user']}/{ids['dataset']}"], "competition_sources": [ids["competition"]],
            "kernel_sources": []}
    if machine_shape:
        meta["machine_shape"] = machine_shape
    return meta
