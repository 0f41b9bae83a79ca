"""The curate YAML config: `text_key` and an ordered list of stages, each a one-key map name -> params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from megatron_llm.data.curate.stages.dedup import ExactDedupParams, MinhashDedupParams, SimhashDedupParams
from megatron_llm.data.curate.stages.language import LanguageParams, LanguageStage
from megatron_llm.data.curate.stages.normalize import NormalizeParams, NormalizeStage
from megatron_llm.data.curate.stages.options import ParamError, as_dict, from_mapping
from megatron_llm.data.curate.stages.pii import PiiParams, PiiStage
from megatron_llm.data.curate.stages.quality import QualityParams, QualityStage
from megatron_llm.data.curate.stages.stage import DocStage
from megatron_llm.data.curate.stages.toxicity import ToxicityParams, ToxicityStage, toxicity_terms
from megatron_llm.data.curate.stages.wordlist import WordlistParams, WordlistStage, load_terms
from megatron_llm.errors import UsageError

STAGE_PARAMS: dict[str, type] = {
    "normalize": NormalizeParams,
    "exact_dedup": ExactDedupParams,
    "minhash_dedup": MinhashDedupParams,
    "simhash_dedup": SimhashDedupParams,
    "quality": QualityParams,
    "language": LanguageParams,
    "pii": PiiParams,
    "wordlist": WordlistParams,
    "toxicity": ToxicityParams,
}
DOC_STAGES: dict[str, type] = {
    "normalize": NormalizeStage,
    "quality": QualityStage,
    "language": LanguageStage,
    "pii": PiiStage,
}
DEDUP_STAGES = frozenset({"exact_dedup", "minhash_dedup", "simhash_dedup"})
TOP_LEVEL_KEYS = ("text_key", "stages")


@dataclass
class StageSpec:
    name: str
    label: str  # unique within the config: the name, or `name#2` for a second stage of the same name
    params: Any

    @property
    def is_dedup(self) -> bool:
        return self.name in DEDUP_STAGES


@dataclass
class CurateConfig:
    text_key: str
    stages: list[StageSpec]
    base_dir: Path  # word-list files are relative to the config file

    def resolved(self) -> dict:
        """Every parameter, defaults included (what the run actually used)."""
        return {"text_key": self.text_key, "stages": [{s.name: as_dict(s.params)} for s in self.stages]}

    def fingerprint_data(self) -> dict:
        """`resolved()` plus the contents of word lists, which change results without changing the config."""
        data = self.resolved()
        data["wordlists"] = {
            s.label: sorted(load_terms(s.params, self.base_dir)) for s in self.stages if s.name == "wordlist"
        }
        data["toxicity_terms"] = {
            s.label: sorted(toxicity_terms(s.params, self.base_dir)) for s in self.stages if s.name == "toxicity"
        }
        return data


def parse_config(data: Any, source: str, base_dir: Path) -> CurateConfig:
    """A CurateConfig from already-loaded YAML data; UsageError names `source` and the field."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with `stages:` at the top level")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} (expected {', '.join(TOP_LEVEL_KEYS)})")
    text_key = data.get("text_key", "text")
    if not isinstance(text_key, str) or not text_key:
        raise UsageError(f"{source}: text_key: expected a non-empty string, got {text_key!r}")
    items = data.get("stages")
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: stages: expected a non-empty list of one-key maps (e.g. `- normalize: {{}}`)")
    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{source}: stages[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise UsageError(f"{where}: expected a one-key map `stage_name: {{params}}`, got {item!r}")
        ((name, raw),) = item.items()
        if name not in STAGE_PARAMS:
            raise UsageError(f"{where}: unknown stage {name!r} (stages: {', '.join(STAGE_PARAMS)})")
        try:
            params = from_mapping(STAGE_PARAMS[name], raw)
        except ParamError as error:
            raise UsageError(f"{where}.{name}.{error.field}: {error.message}") from error
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        stages.append(StageSpec(name, label, params))
    config = CurateConfig(text_key, stages, base_dir)
    for i, spec in enumerate(stages):
        if spec.name in ("wordlist", "toxicity"):
            try:
                (load_terms if spec.name == "wordlist" else toxicity_terms)(spec.params, base_dir)
            except ParamError as error:
                raise UsageError(f"{source}: stages[{i}].{spec.name}.{error.field}: {error.message}") from error
    return config


def load_config(path: str | Path) -> CurateConfig:
    """Read and validate a curate YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"{path}: cannot read config: {error.strerror or error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{line}: invalid YAML: {getattr(error, 'problem', error)}") from error
    return parse_config(data, str(path), path.resolve().parent)


def build_doc_stage(spec: StageSpec, base_dir: Path) -> DocStage:
    """The runnable stage for a per-document StageSpec (language ID loads its model here)."""
    if spec.name == "wordlist":
        return WordlistStage(spec.label, spec.params, base_dir)
    if spec.name == "toxicity":
        return ToxicityStage(spec.label, spec.params, base_dir)
    return DOC_STAGES[spec.name](spec.label, spec.params)
