"""The token-level graph of an embedding model: kdeploy's embedding graphs end in pooling and
normalisation (output ``sentence_embedding``) and also expose the transformer's output
(``token_embeddings``). sentence-transformers' ONNX backend wants the transformer alone,
with output ``last_hidden_state`` (optimum's ``ORTModelForFeatureExtraction`` reads that
name), and pools outside the graph.

``cut_to_hidden_state`` derives that graph from a graph kdeploy already exported or
quantized, instead of exporting or quantizing again: the kept nodes, weights and (for
dynamic INT8) quantizers are the very ones ``verify`` measured; only the pooling and
normalisation nodes after ``token_embeddings`` are dropped and the output is renamed.
``check_cut`` runs both graphs on real sentences and requires the same token outputs.

Needs the ``onnx`` package (host side); ``check_cut`` only onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.core.errors import ExportError

TOKEN_OUTPUT = "token_embeddings"  # what kdeploy's (sentence-transformers') export names it
HIDDEN_OUTPUT = "last_hidden_state"  # what optimum's ORTModelForFeatureExtraction reads


@dataclass(frozen=True)
class HiddenCut:
    """What ``cut_to_hidden_state`` kept and dropped."""

    nodes_kept: int
    nodes_dropped: int
    dropped_ops: tuple[str, ...]
    inputs: tuple[str, ...]
    bytes: int


@dataclass(frozen=True)
class CutCheck:
    """The cut graph's ``last_hidden_state`` against the source graph's token output."""

    texts: int
    max_abs_diff: float
    identical: bool


def has_token_output(onnx_path: Path) -> bool:
    """Whether the graph exposes the transformer's token outputs (kdeploy's embedding
    graphs do; classifiers do not)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(o.name == TOKEN_OUTPUT for o in graph.output)


def _outer_names(graph) -> set[str]:
    """Names a subgraph (an If branch, a Loop body) reads from the enclosing graph: its
    nodes' inputs that neither its own nodes, inputs nor initializers define."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        defined.update(x for x in n.output if x)
        used.update(x for x in n.input if x)
        for a in n.attribute:
            for sub in [a.g] if a.type == a.GRAPH else list(a.graphs):
                used |= _outer_names(sub)
    return used - defined


def _needed_nodes(nodes: list, target: str) -> set[int]:
    """Indices of the nodes ``target`` depends on (walking producers back to the inputs;
    a node with subgraphs, e.g. DeBERTa's If, also depends on what its branches read)."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    keep: set[int] = set()
    stack = [target]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(x for x in nodes[i].input if x)
        for a in nodes[i].attribute:
            if a.type in (a.GRAPH, a.GRAPHS):
                for sub in [a.g] if a.type == a.GRAPH else list(a.graphs):
                    stack.extend(_outer_names(sub))
    return keep


def _reads(node) -> list[str]:
    """Everything a node reads: its inputs and what its subgraphs take from outside."""
    names = [x for x in node.input if x]
    for a in node.attribute:
        for sub in [a.g] if a.type == a.GRAPH else list(a.graphs):
            names.extend(sorted(_outer_names(sub)))
    return names


def _sorted(nodes: list) -> list:
    """``nodes`` in a topological order, the given order wherever it already is one.
    ONNX Runtime's quantizer may put a node before the producer of a value that only one
    of its If branches reads; onnx.checker refuses that."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    done: set[int] = set()
    order: list = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            stack.extend(
                (producer[x], False)
                for x in reversed(_reads(nodes[j]))
                if x in producer and producer[x] not in done
            )

    for i in range(len(nodes)):
        visit(i)
    return order


def cut_to_hidden_state(src: Path, dst: Path) -> HiddenCut:
    """Write ``dst``: the nodes of ``src`` that compute ``token_embeddings``, with that
    tensor as the only output, named ``last_hidden_state``. Node order, names, weights and
    opsets are kept; unused initializers, inputs and value infos are dropped."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    out = next((o for o in graph.output if o.name == TOKEN_OUTPUT), None)
    if out is None:
        raise ExportError(
            f"{src} has no {TOKEN_OUTPUT} output to cut at (outputs: "
            f"{', '.join(o.name for o in graph.output)})",
            where=str(src),
            fix="only embedding graphs exported by kdeploy (sentence-transformers pipelines) "
            "can be cut",
        )
    nodes = list(graph.node)
    keep = _needed_nodes(nodes, TOKEN_OUTPUT)
    kept = _sorted([n for i, n in enumerate(nodes) if i in keep])
    dropped = [n.op_type for i, n in enumerate(nodes) if i not in keep]
    for n in kept:
        for k, name in enumerate(n.output):
            if name == TOKEN_OUTPUT:
                n.output[k] = HIDDEN_OUTPUT
        for k, name in enumerate(n.input):
            if name == TOKEN_OUTPUT:
                n.input[k] = HIDDEN_OUTPUT
    used = {x for n in kept for x in n.input if x}
    for n in kept:  # what subgraphs read from this graph (inputs, initializers)
        for a in n.attribute:
            for sub in [a.g] if a.type == a.GRAPH else list(a.graphs):
                used |= _outer_names(sub)
    new_out = onnx.ValueInfoProto()
    new_out.CopyFrom(out)
    new_out.name = HIDDEN_OUTPUT
    inputs = [i for i in graph.input if i.name in used]
    inits = [t for t in graph.initializer if t.name in used]
    sparse = [t for t in graph.sparse_initializer if t.values.name in used]
    produced = {x for n in kept for x in n.output}
    infos = [v for v in graph.value_info if v.name in produced and v.name != HIDDEN_OUTPUT]
    del graph.node[:]
    graph.node.extend(kept)
    for field, items in (
        (graph.input, inputs),
        (graph.output, [new_out]),
        (graph.initializer, inits),
        (graph.sparse_initializer, sparse),
        (graph.value_info, infos),
    ):
        del field[:]
        field.extend(items)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except Exception as exc:
        raise ExportError(
            f"onnx.checker rejected the {HIDDEN_OUTPUT} graph cut from {src}: {exc}",
            where=str(dst),
            fix="a kdeploy bug: please report it",
        ) from None
    return HiddenCut(
        nodes_kept=len(kept),
        nodes_dropped=len(dropped),
        dropped_ops=tuple(sorted(set(dropped))),
        inputs=tuple(i.name for i in inputs),
        bytes=dst.stat().st_size,
    )


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_cut(
    source_model: Path,
    cut_model: Path,
    batches: list[dict[str, np.ndarray]],
    *,
    atol: float = 1e-5,
) -> CutCheck:
    """Both graphs on the same batches of tokenized real sentences: the cut graph's
    ``last_hidden_state`` must equal the source graph's ``token_embeddings`` (the same
    nodes run; ``atol`` only absorbs ONNX Runtime fusing the smaller graph differently)."""
    a, b = _session(source_model), _session(cut_model)
    worst, identical, texts = 0.0, True, 0
    for feeds in batches:
        want = a.run([TOKEN_OUTPUT], {i.name: feeds[i.name] for i in a.get_inputs()})[0]
        got = b.run([HIDDEN_OUTPUT], {i.name: feeds[i.name] for i in b.get_inputs()})[0]
        if got.shape != want.shape:
            raise ExportError(
                f"the {HIDDEN_OUTPUT} graph {cut_model} gives shape {list(got.shape)}, "
                f"the source graph {list(want.shape)}",
                where=str(cut_model),
                fix="a kdeploy bug: please report it",
            )
        texts += len(want)
        identical = identical and bool(np.array_equal(got, want))
        worst = max(worst, float(np.abs(got - want).max()) if got.size else 0.0)
    if worst > atol:
        raise ExportError(
            f"the {HIDDEN_OUTPUT} graph {cut_model} differs from {source_model}'s "
            f"{TOKEN_OUTPUT} by up to {worst:.2e} (allowed {atol:.0e})",
            where=str(cut_model),
            fix="a kdeploy bug: please report it",
        )
    return CutCheck(texts=texts, max_abs_diff=worst, identical=identical)
