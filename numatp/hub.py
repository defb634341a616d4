"""Models on the Hugging Face Hub, by name, wherever a model path is accepted:

    hf://OWNER/REPO/FILE.gguf     that file (FILE may be in a folder of the repository)
    hf://OWNER/REPO[:QUANT]       the GGUF file of that quantization, picked as llama.cpp's
                                  `-hf OWNER/REPO[:QUANT]` picks it (`-hf` means this too)

Files are downloaded by huggingface_hub into its cache (HF_HOME, HF_HUB_CACHE), with its
progress bar, its retries that resume an interrupted transfer, and HF_TOKEN for private
or gated repositories; HF_ENDPOINT points it at a mirror. A split model
(NAME-00001-of-0000N.gguf) is downloaded whole, every split next to the first.
"""
import os
import re
from pathlib import Path

from numatp.errors import NumatpError, UsageError
from numatp.model.gguf_file import SPLIT_NAME, split_path

PREFIX = "hf://"
_REPO_ID = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
_FILE_REF = re.compile(rf"^(?P<repo>{_REPO_ID})/(?P<file>[^:]+\.gguf)$")
_REPO_REF = re.compile(rf"^(?P<repo>{_REPO_ID})(?::(?P<quant>[\w.-]+))?$")
# Quantizations llama.cpp tries, in order, when none is named.
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
# GGUF files in model repositories that are not language models.
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")


def is_hub_ref(model) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def repo_ref(repo) -> str:
    """`-hf OWNER/REPO[:QUANT]` as a model name."""
    return repo if is_hub_ref(repo) else PREFIX + repo


def resolve(ref: str) -> Path:
    """The local path of the model `ref` names (its first split for a split model),
    downloading whatever is not in the cache yet."""
    body = ref[len(PREFIX):]
    if m := _FILE_REF.match(body):
        repo, filename = m["repo"], m["file"]
        return _download_model(ref, repo, filename, _split_names(ref, filename))
    if m := _REPO_REF.match(body):
        repo = m["repo"]
        files = _list_files(ref, repo)
        filename = pick_gguf(files, m["quant"], ref)
        parts = _split_parts(ref, files, filename)
        return _download_model(ref, repo, filename, parts)
    raise UsageError(f"{ref}: give hf://OWNER/REPO/FILE.gguf or hf://OWNER/REPO[:QUANT]")


def _list_files(ref, repo):
    """The repository's files; when the Hub cannot say (offline, unreachable), those of
    its main branch in the cache, as llama.cpp does."""
    try:
        return _call(ref, lambda api: api.list_repo_files(repo))
    except NumatpError:
        cached = _cached_files(repo)
        if not cached:
            raise
        return cached


def _cached_files(repo):
    from huggingface_hub import scan_cache_dir
    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001  no cache yet, or one that cannot be read
        return []
    for entry in cache.repos:
        if entry.repo_id == repo and entry.repo_type == "model":
            for revision in entry.revisions:
                if "main" in revision.refs:
                    return sorted(f.file_path.relative_to(revision.snapshot_path).as_posix()
                                  for f in revision.files)
    return []


def is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(word in name for word in _NOT_MODELS)


def _is_later_split(path):
    m = SPLIT_NAME.match(path)
    return m is not None and int(m["no"]) != 1


def pick_gguf(files, quant, ref) -> str:
    """llama.cpp's choice of a model file among a repository's `files`: the first model
    GGUF whose path has the quantization followed by "." or "-" (any case), trying
    Q4_K_M then Q8_0 when none is named and then any model GGUF; a split model counts
    by its first split."""
    models = [f for f in files if is_model_file(f) and not _is_later_split(f)]
    for q in [quant] if quant else DEFAULT_QUANTS:
        pattern = re.compile(re.escape(q) + "[.-]", re.IGNORECASE)
        found = next((f for f in models if pattern.search(f)), None)
        if found:
            return found
    if not quant and models:
        return models[0]
    available = ", ".join(f for f in files if f.endswith(".gguf")) or "none"
    what = f"no {quant} GGUF file" if quant else "no GGUF model file"
    raise NumatpError(f"{ref}: {what} in the repository (GGUF files: {available})")


def _split_names(ref, filename):
    """All the splits' names when `filename` is the first split of a model."""
    m = SPLIT_NAME.match(filename)
    if m is None:
        return [filename]
    count = int(m["count"])
    if int(m["no"]) != 1:
        raise UsageError(f"{ref}: this is split {int(m['no'])} of {count} of a model; name its "
                         f"first split, {split_path(m['prefix'], 0, count)}")
    return [split_path(m["prefix"], i, count) for i in range(count)]


def _split_parts(ref, files, filename):
    names = _split_names(ref, filename)
    missing = [n for n in names if n not in files]
    if missing:
        raise NumatpError(f"{ref}: the repository has {filename} but not its split {missing[0]}")
    return names


def _download_model(ref, repo, filename, parts) -> Path:
    from huggingface_hub import hf_hub_download
    endpoint = _endpoint()
    paths = [_call(ref, lambda api: hf_hub_download(repo, part, endpoint=endpoint))
             for part in parts]
    return Path(paths[parts.index(filename)])


def _endpoint():
    """HF_ENDPOINT as it is now: huggingface_hub reads it once, when first imported."""
    return os.environ.get("HF_ENDPOINT") or None


def _call(ref, fn):
    """fn(HfApi) with the Hub's errors as one line each."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf
    try:
        return fn(HfApi(endpoint=_endpoint()))
    except hf.GatedRepoError:
        raise NumatpError(f"{ref}: the repository is gated: accept its terms on the Hub and set "
                          "HF_TOKEN to a token of yours") from None
    except hf.RepositoryNotFoundError:
        raise NumatpError(f"{ref}: no such repository on the Hub (or it is private: set "
                          "HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise NumatpError(f"{ref}: the repository has no main branch") from None
    except hf.RemoteEntryNotFoundError as e:
        raise NumatpError(f"{ref}: no such file in the repository ({_url_of(e)})") from None
    except hf.OfflineModeIsEnabled:
        raise NumatpError(f"{ref}: HF_HUB_OFFLINE is set and the repository is not in the "
                          "cache") from None
    except hf.LocalEntryNotFoundError:
        raise NumatpError(f"{ref}: cannot reach the Hub, and the file is not in the cache "
                          "(HF_HUB_OFFLINE set, or no network)") from None
    except ValueError as e:   # a repository or file name the Hub would refuse
        raise UsageError(f"{ref}: {_first_line(e)}") from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise NumatpError(f"{ref}: the Hub answered HTTP {status} ({_url_of(e)})") from None
    except OSError as e:   # disk full, unwritable cache, a transfer cut short too often
        raise NumatpError(f"{ref}: download failed: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001  the HTTP client's transport errors
        raise NumatpError(f"{ref}: cannot reach the Hub: {_first_line(e)}") from None


def _url_of(error):
    response = getattr(error, "response", None)
    return str(response.url) if response is not None else "no response"


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
