"""Putting steering vectors into llama.cpp: the built-in control vector, or the eval callback.

Two modes (see notes on llama.cpp):
- ``cvec``: llama.cpp's control vector, added to the residual stream at the END of a layer.
  Exact for the MLP site; the attention site is approximated by adding v_attn there too (the MLP
  of that layer does not see it), which is all the built-in vector can express.
- ``exact``: the graph eval callback adds v_attn to ``ffn_inp-L`` (residual + attention output,
  the MLP input) and v_mlp to ``l_out-L`` (layer output): true Pulse-and-Re-Pulse. CPU backend.
  Those are the llama/qwen2 names; gemma3 uses ``sa_out-L`` for v_attn (``fints_edge.llama.arch``).
  The callback can also weigh the vectors by position (a prompt strength, through a position
  cursor) and keep each steered row's norm; both injectors take a scale (the repeat fade).

All llama-cpp-python / ggml symbol look-ups live here, resolved once.
Vectors come in profile layout: float32 [S, L, n_embd] with the profile's ``sites`` and
``layers`` (HF 0-based decoder indices).
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fints_edge.config import MODES, Mode
from fints_edge.errors import FintsEdgeError
from fints_edge.layers import Site, cvec_row
from fints_edge.llama import native
from fints_edge.llama.arch import ArchGraph, cvec_note, graph_of
from fints_edge.llama.context import prefill

if TYPE_CHECKING:
    from fints_edge.plan import Steering

_GGML_TYPE_F32 = 0
# Computed once per micro-batch before any steered tensor, one row per token: the position cursor.
_CURSOR_TENSOR = b"attn_norm-0"


class Injector(Protocol):
    """Sets steering for the next requests of one llama context, and clears it. Both modes
    implement all of it, so a caller never asks which one it has."""

    mode: Mode
    can_tap: bool  # reads graph tensors (on-device extraction): exact mode only

    def apply(self, steering: Steering, prompt: Sequence[int]) -> None:
        """Everything of one request's ``steering``, for a generation after ``prompt`` (the
        context was just reset). A mode that needs the prompt computed first does it here."""
        ...

    def set(self, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]) -> None:
        """Only main vectors, at every position (tests, benchmarks, the static GGUF)."""
        ...

    def set_scale(self, scale: float) -> None:
        """Multiply the steering set by ``scale`` from the next decode on (the repeat fade)."""
        ...

    def clear(self) -> None: ...

    def rewind(self) -> None:
        """The context was reset: the next token computed is position 0."""
        ...

    def raise_error(self) -> None:
        """Raise what failed inside llama.cpp's callback during the last decode, if anything."""
        ...


@contextmanager
def applied(injector: Injector, steering: Steering | None, prompt: Sequence[int]) -> Iterator[None]:
    """``with applied(inj, steering, prompt):`` one request's steering, always cleared on the way
    out; None = nothing to set or clear."""
    if steering is None:
        yield
        return
    injector.apply(steering, prompt)
    try:
        yield
    finally:
        injector.clear()


@contextmanager
def steered(
    injector: Injector, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]
) -> Iterator[None]:
    """``with steered(inj, v, sites, layers):`` steering is always cleared on the way out."""
    injector.set(vectors, sites, layers)
    try:
        yield
    finally:
        injector.clear()


def _check_shape(
    vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int], n_embd: int
) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    expect = (len(sites), len(layers), n_embd)
    if v.shape != expect:
        raise FintsEdgeError(
            f"steering vectors have shape {v.shape}, expected [sites, layers, n_embd] = {expect}"
        )
    return v


# -- cvec ---------------------------------------------------------------------------------------
@functools.cache
def _set_cvec_fn() -> Any:
    import llama_cpp

    fn = getattr(llama_cpp, "llama_set_adapter_cvec", None) or getattr(
        llama_cpp, "llama_apply_adapter_cvec", None
    )
    if fn is None:
        raise FintsEdgeError(
            "this llama-cpp-python has neither llama_set_adapter_cvec nor llama_apply_adapter_cvec; "
            "install the pinned version (`make setup`)"
        )
    return fn


class CvecInjector:
    """The built-in control vector: one [n_layer, n_embd] buffer, row k -> output of layer k+1."""

    mode: Mode = "cvec"
    can_tap = False

    def __init__(self, llm: Any, n_layer: int, n_embd: int) -> None:
        self._llm = llm
        self.n_layer = n_layer
        self.n_embd = n_embd
        self._set = _set_cvec_fn()
        self.active = False
        self._buffer: np.ndarray | None = None  # the last buffer set, unscaled

    def buffer(
        self, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]
    ) -> np.ndarray:
        """float32 [n_layer, n_embd]; both sites of a layer land on the same row (attn approximated)."""
        v = _check_shape(vectors, sites, layers, self.n_embd)
        buf = np.zeros((self.n_layer, self.n_embd), dtype=np.float32)
        for j, layer in enumerate(layers):
            buf[cvec_row(int(layer))] += v[:, j, :].sum(axis=0)
        return buf

    def set(self, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]) -> None:
        self._buffer = self.buffer(vectors, sites, layers)
        self._apply(self._buffer)

    def apply(self, steering: Steering, prompt: Sequence[int]) -> None:
        """The control vector has no positions: no opening, no norm preservation. A prompt
        strength is a scaled prefill of the prompt but its last token, whose KV the generation
        then reuses; the last prompt token (which picks the first answer token) and the answer
        are computed at full strength."""
        if steering.opening is not None or steering.preserve_norm:
            raise FintsEdgeError(
                "opening signals and norm preservation act inside the graph: use --mode exact"
            )
        try:
            self.set(steering.vectors, steering.sites, steering.layers)
            if steering.prompt_scale != 1.0 and len(prompt) >= 2:
                self.set_scale(steering.prompt_scale)
                prefill(self._llm, prompt[:-1])
                self.set_scale(1.0)
        except BaseException:
            self.clear()  # a refused or failed steering leaves nothing behind
            raise

    def rewind(self) -> None:
        """Nothing counts positions here."""

    def raise_error(self) -> None:
        """No callback: llama.cpp's own errors arrive as the decode's RuntimeError."""

    def set_scale(self, scale: float) -> None:
        if self._buffer is not None:
            self._apply((self._buffer * np.float32(scale)).astype(np.float32))

    def _apply(self, buf: np.ndarray) -> None:
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # llama.cpp copies the data
        rc = self._set(self._llm.ctx, ptr, buf.size, self.n_embd, 1, self.n_layer - 1)
        if rc != 0:
            raise FintsEdgeError(
                f"llama.cpp refused the control vector (code {rc}); the profile may not match the model"
            )
        self.active = True

    def clear(self) -> None:
        self._buffer = None
        rc = self._set(self._llm.ctx, None, 0, self.n_embd, 0, 0)
        if rc != 0:
            raise FintsEdgeError(f"llama.cpp could not clear the control vector (code {rc})")
        self.active = False


# -- exact (eval callback) ------------------------------------------------------------------------
@functools.cache
def _ggml() -> ctypes.CDLL:
    """ggml tensor accessors that llama-cpp-python does not bind."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    if not candidates:
        raise FintsEdgeError(
            f"{lib_dir}: libggml-base not found; reinstall llama-cpp-python (`make setup`)"
        )
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    return lib


class CallbackInjector:
    """Adds vectors to named graph tensors in place, as llama.cpp computes them.

    The ctypes callback object is owned here and must outlive the llama context; create the
    context with :func:`open_steerable` so both share one lifetime. When the C filter is built
    (``fints_edge.llama.native``), llama.cpp's per-node "do you need this tensor?" is answered in C
    from the names this injector keeps it up to date with; otherwise in Python.
    """

    mode: Mode = "exact"
    can_tap = True

    def __init__(self, n_embd: int, arch: str = "llama", use_filter: bool = True) -> None:
        import llama_cpp

        self.n_embd = n_embd
        self.graph: ArchGraph = graph_of(arch)  # open_steerable sets the model's own
        self._lib = _ggml()
        self._targets: dict[bytes, np.ndarray] = {}  # tensor name -> float32 [n_embd]
        self._taps: dict[bytes, list[np.ndarray]] = {}  # tensor name -> copied [rows, n_embd]
        # Opening steering: added only at absolute positions [start, start + count).
        self._opening: dict[bytes, np.ndarray] = {}
        self._window = (0, 0)
        # Time profile of the main vectors: x prompt_scale before position ``answer_start``.
        self._answer_start: int | None = None
        self._prompt_scale = 1.0
        self._scale = 1.0  # set_scale: the fade
        self._preserve_norm = False  # rescale each steered row to its norm before steering
        self._cursor = 0  # tokens computed since rewind()
        self._ubatch = (0, 0)  # (first position, rows) of the micro-batch being computed
        self._error: BaseException | None = None  # raised inside the callback, see raise_error
        self._error_tensor = ""
        self.calls = 0  # in-place additions done (tests and benchmarks read it)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)
        lib = native.load() if use_filter else None
        self._filter: native.Filter | None = None
        self._filter_fn: Any = None
        if lib is not None:
            self._filter = native.Filter(
                python=ctypes.cast(self.callback, ctypes.c_void_p).value,
                get_name=ctypes.cast(self._lib.ggml_get_name, ctypes.c_void_p).value,
                n_names=0,
            )
            address = ctypes.cast(lib.fe_filter_eval, ctypes.c_void_p).value
            self._filter_fn = llama_cpp.ggml_backend_sched_eval_callback(address or 0)

    @property
    def filtered(self) -> bool:
        """True when the C filter answers llama.cpp's per-node questions."""
        return self._filter is not None

    def eval_callback(self) -> tuple[Any, int | None]:
        """(cb_eval, cb_eval_user_data) for the llama context params."""
        if self._filter is None:
            return self.callback, None
        return self._filter_fn, ctypes.addressof(self._filter)

    def _sync_filter(self) -> None:
        """Tell the C filter which tensors to stop at: what the ask step below would say yes to."""
        if self._filter is None:
            return
        names = set(self._targets) | set(self._taps) | set(self._opening)
        if names and (self._opening or self._answer_start is not None):
            names.add(_CURSOR_TENSOR)
        self._filter.set_names(sorted(names))

    @property
    def active(self) -> bool:
        return bool(self._targets or self._opening)

    def _by_tensor(
        self, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]
    ) -> dict[bytes, np.ndarray]:
        v = _check_shape(vectors, sites, layers, self.n_embd)
        targets: dict[bytes, np.ndarray] = {}
        for i, site in enumerate(sites):
            for j, layer in enumerate(layers):
                if np.any(v[i, j]):
                    name = self.graph.inject_tensor(site, int(layer)).encode()
                    targets[name] = targets.get(name, 0) + np.ascontiguousarray(v[i, j])
        return targets

    def set(self, vectors: np.ndarray, sites: Sequence[Site], layers: Sequence[int]) -> None:
        self._targets = self._by_tensor(vectors, sites, layers)
        self._sync_filter()

    def apply(self, steering: Steering, prompt: Sequence[int]) -> None:
        """Main vectors (x prompt scale before the last prompt token), the opening window from
        the last prompt token on, and norm preservation, as one."""
        answer_start = len(prompt) - 1
        try:
            self.set(steering.vectors, steering.sites, steering.layers)
            self._set_prompt_scale(answer_start, steering.prompt_scale)
            self._preserve_norm = steering.preserve_norm
            if steering.opening is not None:
                self._set_opening(
                    steering.opening,
                    steering.sites,
                    steering.layers,
                    answer_start,
                    steering.opening_window,
                )
        except BaseException:
            self.clear()  # a refused steering leaves nothing behind
            raise

    def _set_opening(
        self,
        vectors: np.ndarray,
        sites: Sequence[Site],
        layers: Sequence[int],
        start: int,
        count: int,
    ) -> None:
        """Add ``vectors`` only at token positions start .. start + count - 1 (0 = the first
        prompt token; start = prompt length - 1 is the position that picks the first answer
        token). Positions are counted from :meth:`rewind`, which must follow a KV-cache reset."""
        if start < 0 or count < 1:
            raise FintsEdgeError(f"opening window start {start}, count {count}: need >= 0 and >= 1")
        self._opening = self._by_tensor(vectors, sites, layers)
        self._window = (start, count)
        self._sync_filter()

    def _set_prompt_scale(self, answer_start: int, scale: float) -> None:
        """Add the main vectors x ``scale`` at positions before ``answer_start`` and in full from
        it on (answer_start = prompt length - 1: the last prompt token, which picks the first
        answer token, is steered in full). scale 1 = every position alike; 0 = answer only."""
        if answer_start < 0 or not np.isfinite(scale):
            raise FintsEdgeError(f"answer start {answer_start} / prompt scale {scale}: invalid")
        self._answer_start = None if scale == 1.0 else answer_start
        self._prompt_scale = float(scale)
        self._sync_filter()

    def set_scale(self, scale: float) -> None:
        self._scale = float(scale)

    def rewind(self) -> None:
        """The next token computed is position 0 (call right after the llama context's reset)."""
        self._cursor = 0
        self._ubatch = (0, 0)

    def clear(self) -> None:
        self._targets = {}
        self._opening = {}
        self._answer_start = None
        self._prompt_scale = 1.0
        self._scale = 1.0
        self._preserve_norm = False
        self._sync_filter()

    @contextmanager
    def tapping(self, names: Sequence[str]) -> Iterator[dict[str, list[np.ndarray]]]:
        """Copy the named graph tensors as they are computed: name -> [rows, n_embd] per
        micro-batch, in order. Used for on-device signal extraction (``fints_edge.learn.extract``)."""
        self._taps = {n.encode(): [] for n in names}
        self._sync_filter()
        out: dict[str, list[np.ndarray]] = {}
        try:
            yield out
        finally:
            taps, self._taps = self._taps, {}
            self._sync_filter()
            out.update({k.decode(): v for k, v in taps.items()})
        self.raise_error()  # a decode in the block may not have checked

    def raise_error(self) -> None:
        """Raise what failed inside the eval callback since the last call; call it after every
        decode. A FintsEdgeError (the original chained); Ctrl-C stays a KeyboardInterrupt."""
        error, self._error = self._error, None
        if error is None:
            return
        if not isinstance(error, Exception) or isinstance(error, FintsEdgeError):
            raise error  # KeyboardInterrupt / SystemExit, or already says what to change
        raise FintsEdgeError(
            f"the eval callback (steering or reading) failed at graph tensor {self._error_tensor} "
            f"({type(error).__name__}: {error}); the computation was stopped and its result "
            "dropped. The profile may not fit this model: rebuild it for the model, or use --mode cvec"
        ) from error

    def _on_tensor(self, tensor: int, ask: bool, _user_data: int) -> bool:
        """The eval callback. ggml calls it from C, where a Python exception cannot travel (ctypes
        would print it and the graph would go on half-steered): a failure is kept for
        :meth:`raise_error` and False stops the computation (when asking: "not needed")."""
        if self._error is not None:
            return False
        if not self._targets and not self._taps and not self._opening:
            return not ask  # ask: "nothing needed"; compute: True means "go on"
        try:
            return self._on_tensor_unsafe(tensor, ask)
        except BaseException as e:  # re-raised by raise_error once the decode has returned
            self._error = e
            self._error_tensor = (self._lib.ggml_get_name(tensor) or b"?").decode(errors="replace")
            return False

    def _on_tensor_unsafe(self, tensor: int, ask: bool) -> bool:
        name = self._lib.ggml_get_name(tensor)
        vec = self._targets.get(name)
        tap = self._taps.get(name)
        first = self._opening.get(name)
        positional = bool(self._opening) or self._answer_start is not None
        cursor = positional and name == _CURSOR_TENSOR
        if ask:
            return vec is not None or tap is not None or first is not None or cursor
        if cursor:
            rows = self._lib.ggml_nelements(tensor) // self.n_embd
            self._ubatch = (self._cursor, rows)
            self._cursor += rows
            if self._opening and self._ubatch[0] >= sum(self._window):
                self._opening = {}  # the window is behind: no more graph stops for it
                self._sync_filter()
        if vec is not None or first is not None:
            data = self._rows(tensor, name)
            before = np.linalg.norm(data, axis=1, keepdims=True) if self._preserve_norm else None
            if vec is not None:
                self._add_main(data, vec)
            if first is not None:
                self._add_in_window(data, first)
            if before is not None:  # norm-preserving: the direction moves, the size stays
                after = np.linalg.norm(data, axis=1, keepdims=True)
                data *= np.where(after > 0, before / np.maximum(after, 1e-30), 1.0)
        if tap is not None:
            tap.append(self._rows(tensor, name).copy())
        return True

    def _add_main(self, data: np.ndarray, vec: np.ndarray) -> None:
        if self._answer_start is None:
            data += vec * np.float32(self._scale) if self._scale != 1.0 else vec
        else:
            w = np.where(self._positions(data) >= self._answer_start, 1.0, self._prompt_scale)
            data += (w * self._scale).astype(np.float32)[:, None] * vec
        self.calls += 1

    def _positions(self, data: np.ndarray) -> np.ndarray:
        """Absolute positions of ``data``'s rows: a micro-batch's rows are its positions; a
        pruned last layer keeps its last rows."""
        first_pos, n_rows = self._ubatch
        return first_pos + n_rows - data.shape[0] + np.arange(data.shape[0])

    def _add_in_window(self, data: np.ndarray, vec: np.ndarray) -> None:
        positions = self._positions(data)
        start, count = self._window
        hit = (positions >= start) & (positions < start + count)
        if hit.any():
            data[hit] += vec
            self.calls += 1

    def _rows(self, tensor: int, name: bytes) -> np.ndarray:
        """The tensor's data as a writable float32 [rows, n_embd] view."""
        ggml_type = ctypes.c_int32.from_address(tensor).value  # first field of struct ggml_tensor
        n = self._lib.ggml_nelements(tensor)
        if (
            ggml_type != _GGML_TYPE_F32
            or n % self.n_embd
            or not self._lib.ggml_is_contiguous(tensor)
        ):
            raise FintsEdgeError(
                f"graph tensor {name.decode()} is not a contiguous f32 [*, {self.n_embd}] tensor"
            )
        return np.ctypeslib.as_array(
            self._lib.ggml_get_data_f32(tensor), shape=(n // self.n_embd, self.n_embd)
        )


# -- opening a model with the right injector ----------------------------------------------------------
def open_steerable(
    model_path: str | Path, mode: Mode, native_filter: bool = True, **open_kwargs: Any
) -> tuple[Any, Injector]:
    """A Llama and its injector. In ``exact`` mode the context is created with our eval callback,
    behind the C filter when it is built and ``native_filter`` is True."""
    from fints_edge.llama.model import n_layers, open_llama

    if mode not in MODES:
        raise FintsEdgeError(f"unknown injection mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "cvec":
        llm = open_llama(model_path, **open_kwargs)
        note = cvec_note(_arch(llm))
        if note:  # runs anyway: the control vector is llama.cpp's own, on every arch it builds
            warnings.warn(f"{model_path}: {note}", stacklevel=2)
        n_layer = n_layers(llm)
        return llm, CvecInjector(llm, n_layer, llm.n_embd())
    llm = open_llama(
        model_path, llama_cls=_callback_llama_class(), use_filter=native_filter, **open_kwargs
    )
    try:
        llm.injector.graph = graph_of(_arch(llm), str(model_path))
    except FintsEdgeError:
        llm.close()
        raise
    llm.injector.n_embd = llm.n_embd()
    return llm, llm.injector


def _arch(llm: Any) -> str:
    return str(llm.metadata.get("general.architecture", "unknown"))


@functools.cache
def _callback_llama_class() -> type:
    """A Llama whose context params carry our eval callback from the moment they exist.

    ``Llama.__init__`` creates ``self.context_params`` and the context in one go and takes no
    callback argument; a property setter catches the params struct as it is assigned, so the
    context is born with the callback (no second context, no patching of llama-cpp-python).
    """
    import llama_cpp

    class CallbackLlama(llama_cpp.Llama):  # type: ignore[misc]
        def __init__(self, *args: Any, use_filter: bool = True, **kwargs: Any) -> None:
            # n_embd is known once the model loads
            self.injector = CallbackInjector(n_embd=0, use_filter=use_filter)
            super().__init__(*args, **kwargs)

        @property
        def context_params(self) -> Any:
            return self._fe_context_params

        @context_params.setter
        def context_params(self, params: Any) -> None:
            params.cb_eval, params.cb_eval_user_data = self.injector.eval_callback()
            self._fe_context_params = params

    return CallbackLlama
