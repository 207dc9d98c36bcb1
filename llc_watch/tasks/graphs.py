"""Graph algorithms on small random connected graphs: BFS, DFS, shortest path, topological sort, MST.

The graph tasks of the quiet-features paper (Naidu et al. 2025, arXiv 2505.03997; 11 nodes there,
8 by default here so a CPU preset trains in minutes).

Nodes are letters `A`, `B`, … (token id = node label, at most 26 nodes). Encodings, one example each:

    bfs / dfs   s  u v  u v  …  =  answer (n nodes)          <EOS>
    path        s t  u v  u v  …  =  s … t                   <EOS> <PAD> …
    topo_sort   u v  u v  …  =  answer (n nodes)               <EOS>     (edges directed u -> v)
    mst         u v w  u v w  …  =  u v  u v  … (n - 1 edges)  <EOS>     (w: weight tokens w1, w2, …)

Undirected edges are written with the smaller label first; the edge list is in random order.
The loss is on the answer tokens and <EOS> (padding after <EOS> is masked out).

Tie-break rules (each instance has exactly one answer):
  * BFS: the queue discipline is FIFO and a node's unvisited neighbours are enqueued in increasing
    label order (a node is marked visited when enqueued).
  * DFS: recursive preorder DFS that tries neighbours in increasing label order.
  * path: of all shortest s-t paths, the lexicographically smallest node sequence.
  * topo_sort: Kahn's algorithm that always outputs the smallest-labelled available node, i.e.
    the lexicographically smallest topological order.
  * mst: edge weights of one graph are distinct (drawn without replacement from 1..max_weight), so
    the minimum spanning tree is unique; its edges are listed in Kruskal order (increasing weight).

Feature labels, at the answer positions (position t is the state that predicts targets[:, t]):
  * `adj_{j}`     node j is a neighbour (topo_sort: a successor) of the current node, the node
                  read at this position (the last node output; the start node at `=` for BFS/DFS/path)
  * `edge_{i}_{j}`  the adjacency matrix (i < j undirected; i != j directed), constant per example
                  (only with `matrix_features=True`, the default)
  * `visited_{v}` node v was already output before this position (BFS, DFS, path, topo_sort)
  * BFS: `in_queue_{v}` (v is in the queue just before the node predicted here is dequeued),
    `dist` (distance from the source of the node predicted here)
  * DFS: `on_stack_{v}` (v is on the recursion stack when the node predicted here is discovered,
    i.e. v is an ancestor of it in the DFS tree), `depth` (its depth in the DFS tree)
  * path: `dist` (distance from the source of the node predicted here), `dist_to_target` (distance
    from the current node to the target)
  * topo_sort: `indeg_{v}` (in-degree of v among the nodes not yet output; NaN once v is output),
    `available_{v}` (v has in-degree 0 and is not yet output)
  * mst: `comp_{v}` (union-find component of v before the edge predicted here is chosen, named by
    its smallest node label), `weight` (weight of the MST edge predicted here)

    >>> task = BFS(n_nodes=6, n_edges=8)
    >>> batch = task.sample(4, seed=0)
    >>> batch.tokens.shape          # [B, 1 + 2 * n_edges + 1 + n_nodes]
    torch.Size([4, 24])
    >>> int(batch.loss_mask[0].sum())   # n_nodes answer tokens and <EOS>
    7
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .base import Batch, FeatureSpec, Task, TaskConfigError, batch_from_sequences

MAX_NODES = 26
LETTERS = [chr(ord("A") + i) for i in range(MAX_NODES)]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --- graph generation ----------------------------------------------------------------------------

def random_connected_graph(n: int, m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A random connected graph: a random recursive tree (each node, in a random order, attaches to a
    uniformly chosen earlier node) plus m - (n - 1) distinct extra edges chosen uniformly.
    Edges as (u, v) with u < v, in random order."""
    order = rng.permutation(n)
    edges = set()
    for i in range(1, n):
        a, b = int(order[i]), int(order[rng.integers(0, i)])
        edges.add((min(a, b), max(a, b)))
    if m > len(edges):
        rest = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in edges]
        pick = rng.choice(len(rest), size=m - len(edges), replace=False)
        edges.update(rest[k] for k in pick)
    edges = sorted(edges)
    return [edges[k] for k in rng.permutation(len(edges))]


def random_dag(n: int, m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A random weakly connected DAG: a connected undirected graph oriented along a random node order."""
    rank = np.empty(n, dtype=int)
    rank[rng.permutation(n)] = np.arange(n)
    out = []
    for u, v in random_connected_graph(n, m, rng):
        out.append((u, v) if rank[u] < rank[v] else (v, u))
    return out


def _neighbours(n: int, edges, directed: bool = False) -> list[list[int]]:
    nb = [[] for _ in range(n)]
    for u, v in edges:
        nb[u].append(v)
        if not directed:
            nb[v].append(u)
    return [sorted(set(x)) for x in nb]


# --- the algorithms, with their intermediate states ------------------------------------------------

def bfs_trace(n: int, edges, source: int):
    """BFS order and, per output step k, the queue contents just before the k-th dequeue.

    Returns (order, queues, dist): queues[k] = list of queued nodes (front first) before dequeue k.
    """
    nb = _neighbours(n, edges)
    dist = [-1] * n
    dist[source] = 0
    queue, order, queues = [source], [], []
    while queue:
        queues.append(list(queue))
        u = queue.pop(0)
        order.append(u)
        for v in nb[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return order, queues, dist


def dfs_trace(n: int, edges, source: int):
    """Recursive preorder DFS; returns (order, stacks): stacks[k] = the recursion stack (root first)
    at the moment the k-th node is discovered (its DFS-tree ancestors; empty for the source)."""
    nb = _neighbours(n, edges)
    seen = [False] * n
    order, stacks = [], []

    def visit(u, stack):
        seen[u] = True
        order.append(u)
        stacks.append(list(stack))
        stack.append(u)
        for v in nb[u]:
            if not seen[v]:
                visit(v, stack)
        stack.pop()

    visit(source, [])
    return order, stacks


def bfs_distances(n: int, edges, source: int) -> list[int]:
    return bfs_trace(n, edges, source)[2]


def shortest_path(n: int, edges, s: int, t: int) -> list[int]:
    """The lexicographically smallest shortest s-t path."""
    nb = _neighbours(n, edges)
    to_t = bfs_distances(n, edges, t)
    if to_t[s] < 0:
        raise ValueError("s and t are not connected")
    path = [s]
    while path[-1] != t:
        u = path[-1]
        path.append(min(v for v in nb[u] if to_t[v] == to_t[u] - 1))
    return path


def topo_trace(n: int, edges):
    """Kahn's algorithm, smallest available label first. Returns (order, indegs): indegs[k] = the
    in-degrees (among not-yet-output nodes; -1 for output ones) before the k-th output."""
    nb = _neighbours(n, edges, directed=True)
    indeg = [0] * n
    for u, v in set(map(tuple, edges)):
        indeg[v] += 1
    done = [False] * n
    order, indegs = [], []
    for _ in range(n):
        indegs.append([-1 if done[v] else indeg[v] for v in range(n)])
        avail = [v for v in range(n) if not done[v] and indeg[v] == 0]
        if not avail:
            raise TaskConfigError("topo_sort: the graph has a cycle, so it has no topological order")
        u = avail[0]
        done[u] = True
        order.append(u)
        for v in nb[u]:
            indeg[v] -= 1
    return order, indegs


def kruskal_trace(n: int, weighted_edges):
    """Kruskal on (u, v, w) edges with distinct w. Returns (tree, comps): tree = MST edges (u, v, w)
    in the order chosen; comps[k] = component label (smallest member) of every node before tree[k]."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def labels():
        groups: dict[int, int] = {}
        for v in range(n):
            r = find(v)
            groups[r] = min(groups.get(r, v), v)
        return [groups[find(v)] for v in range(n)]

    tree, comps = [], []
    for u, v, w in sorted(weighted_edges, key=lambda e: e[2]):
        ru, rv = find(u), find(v)
        if ru != rv:
            comps.append(labels())
            tree.append((u, v, w))
            parent[ru] = rv
    return tree, comps


# --- tasks -----------------------------------------------------------------------------------------

@dataclass
class _GraphTask(Task):
    n_nodes: int = 8            # nodes per graph (letters A, B, …; at most 26)
    n_edges: int = 12           # edges per graph (n_nodes - 1 .. n_nodes (n_nodes - 1) / 2)
    matrix_features: bool = True  # also label the whole adjacency matrix (edge_{i}_{j}) per example

    directed: ClassVar[bool] = False
    n_prefix: ClassVar[int] = 1   # tokens before the edge list (start node; path: start, target)
    edge_width: ClassVar[int] = 2

    def __post_init__(self):
        n, m = self.n_nodes, self.n_edges
        if not _is_int(n) or n < 2:
            raise TaskConfigError(f"{self.name}: n_nodes={n!r} must be an integer >= 2")
        if n > MAX_NODES:
            raise TaskConfigError(f"{self.name}: n_nodes={n} is more nodes than the vocabulary holds "
                                  f"(node tokens A..Z: at most {MAX_NODES})")
        max_m = n * (n - 1) // 2
        if not _is_int(m) or not n - 1 <= m <= max_m:
            raise TaskConfigError(f"{self.name}: n_edges={m!r} must be an integer from n_nodes - 1 = {n - 1} "
                                  f"(connected) to n_nodes (n_nodes - 1) / 2 = {max_m}")
        if not isinstance(self.matrix_features, bool):
            raise TaskConfigError(f"{self.name}: matrix_features={self.matrix_features!r} must be true or false")

    # vocabulary: node letters first (token id = node label), then specials
    @property
    def specials(self) -> list[str]:
        return ["=", "<EOS>", "<PAD>"]

    @property
    def vocab(self):
        return LETTERS[: self.n_nodes] + self.specials

    def tok(self, s: str) -> int:
        """Token id of a vocabulary string (node letters are ids 0..n_nodes-1)."""
        return self.n_nodes + self.specials.index(s) if s not in LETTERS[: self.n_nodes] else LETTERS.index(s)

    @property
    def answer_len(self) -> int:
        return self.n_nodes

    @property
    def seq_total(self) -> int:
        return self.n_prefix + self.edge_width * self.n_edges + 1 + self.answer_len + 1

    def _matrix_specs(self) -> dict[str, FeatureSpec]:
        if not self.matrix_features:
            return {}
        n = self.n_nodes
        pairs = ([(i, j) for i in range(n) for j in range(n) if i != j] if self.directed
                 else [(i, j) for i in range(n) for j in range(i + 1, n)])
        what = "edge {} -> {}" if self.directed else "edge {} - {}"
        return {f"edge_{i}_{j}": FeatureSpec("binary", f"the graph has the {what.format(LETTERS[i], LETTERS[j])}")
                for i, j in pairs}

    def _node_specs(self, prefix: str, kind: str, what: str, n_classes: int = 2) -> dict[str, FeatureSpec]:
        return {f"{prefix}_{v}": FeatureSpec(kind, what.format(LETTERS[v]), n_classes) for v in range(self.n_nodes)}

    def _adj_specs(self) -> dict[str, FeatureSpec]:
        rel = "a successor" if self.directed else "a neighbour"
        return self._node_specs("adj", "binary", f"node {{}} is {rel} of the node read here (adjacency row)")

    # --- generation ---
    def random_graph(self, rng: np.random.Generator):
        return random_connected_graph(self.n_nodes, self.n_edges, rng)

    def sample(self, n, seed):
        rng = np.random.default_rng(int(seed))
        return self.encode([self.random_instance(rng) for _ in range(n)])

    def random_instance(self, rng: np.random.Generator) -> dict:
        """A random graph and start node; tasks that need more override this."""
        return {"edges": self.random_graph(rng), "source": int(rng.integers(0, self.n_nodes))}

    def check_instance(self, inst: dict) -> None:
        """Reject an instance this task cannot encode (wrong size, disconnected, cyclic DAG, ...)."""
        n = self.n_nodes
        edges = [tuple(e[:2]) for e in inst["edges"]]
        if len(edges) != self.n_edges:
            raise TaskConfigError(f"{self.name}: an instance has {len(edges)} edges; n_edges={self.n_edges}")
        for u, v in edges:
            if not (0 <= u < n and 0 <= v < n) or u == v:
                raise TaskConfigError(f"{self.name}: edge ({u}, {v}) is not between two distinct nodes 0..{n - 1}")
        keys = [tuple(sorted(e)) for e in edges] if not self.directed else edges
        if len(set(keys)) != len(keys):
            raise TaskConfigError(f"{self.name}: an instance repeats an edge")
        # weak connectivity
        nb = _neighbours(n, edges)
        seen, stack = {0}, [0]
        while stack:
            for v in nb[stack.pop()]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        if len(seen) != n:
            raise TaskConfigError(f"{self.name}: an instance's graph is not connected")

    def encode(self, instances: list[dict]) -> Batch:
        """Encode instances (dicts with `edges` and task-specific keys) into a Batch."""
        B, L = len(instances), self.seq_total
        T = L - 1
        pad = self.tok("<PAD>")
        seq = np.full((B, L), pad, dtype=np.int64)
        feats = {k: np.full((B, T), np.nan, dtype=np.float32) for k in self.features}
        eq, eos = self.tok("="), self.tok("<EOS>")
        matrix = [(name, tuple(map(int, name.split("_")[1:]))) for name in self._matrix_specs()]
        start = self.n_prefix + self.edge_width * self.n_edges + 1   # index of the first answer token
        ends = torch.empty(B, dtype=torch.long)
        for b, inst in enumerate(instances):
            self.check_instance(inst)
            prefix, answer, per_step = self.solve(inst)
            row = prefix + [x for e in self.edge_tokens(inst) for x in e] + [eq] + answer + [eos]
            seq[b, : len(row)] = row
            ends[b] = len(row)
            first = start - 1   # input position predicting the first answer token
            for k, labels in enumerate(per_step):
                for name, value in labels.items():
                    feats[name][b, first + k] = float(value)
            for name, ij in matrix:
                feats[name][b, first: first + len(answer) + 1] = float(ij in inst["_edge_set"])
        feats = {k: torch.from_numpy(v) for k, v in feats.items()}
        return batch_from_sequences(torch.from_numpy(seq), answer_start=start, features=feats, answer_end=ends)

    def edge_tokens(self, inst) -> list[list[int]]:
        return [[u, v] for u, v in inst["edges"]]

    def solve(self, inst) -> tuple[list[int], list[int], list[dict]]:
        """(prefix tokens, answer tokens, feature labels per answer step incl. the <EOS> step)."""
        raise NotImplementedError

    def _adj_row(self, inst, u) -> dict:
        nb = inst["_nb"][u]
        return {f"adj_{j}": float(j in nb) for j in range(self.n_nodes)}

    def _edge_set(self, inst):
        es = {tuple(e[:2]) for e in inst["edges"]}
        if not self.directed:
            es |= {(v, u) for u, v in es}
        inst["_edge_set"] = es
        inst["_nb"] = _neighbours(self.n_nodes, [e[:2] for e in inst["edges"]], self.directed)


@dataclass
class BFS(_GraphTask):
    name = "bfs"
    summary = ("breadth-first order from a start node; features: adjacency row, queue membership, "
               "visited set, distance from the source")

    @property
    def features(self):
        return {**self._adj_specs(),
                **self._node_specs("in_queue", "binary", "node {} is in the BFS queue before the node predicted here is dequeued"),
                **self._node_specs("visited", "binary", "node {} was already output"),
                "dist": FeatureSpec("numeric", "distance from the source of the node predicted here"),
                **self._matrix_specs()}

    def solve(self, inst):
        n, s = self.n_nodes, inst["source"]
        self._edge_set(inst)
        order, queues, dist = bfs_trace(n, inst["edges"], s)
        steps = []
        for k in range(n + 1):   # k = n: the <EOS> step
            lab = {f"visited_{v}": float(v in order[:k]) for v in range(n)}
            if k > 0:
                lab.update(self._adj_row(inst, order[k - 1]))
            if k < n:
                lab.update({f"in_queue_{v}": float(v in queues[k]) for v in range(n)})
                lab["dist"] = dist[order[k]]
            steps.append(lab)
        return [s], order, steps


@dataclass
class DFS(_GraphTask):
    name = "dfs"
    summary = ("depth-first preorder from a start node; features: adjacency row, recursion-stack "
               "membership, visited set, depth")

    @property
    def features(self):
        return {**self._adj_specs(),
                **self._node_specs("on_stack", "binary", "node {} is on the DFS recursion stack when the node predicted here is discovered"),
                **self._node_specs("visited", "binary", "node {} was already output"),
                "depth": FeatureSpec("numeric", "depth in the DFS tree of the node predicted here"),
                **self._matrix_specs()}

    def solve(self, inst):
        n, s = self.n_nodes, inst["source"]
        self._edge_set(inst)
        order, stacks = dfs_trace(n, inst["edges"], s)
        steps = []
        for k in range(n + 1):
            lab = {f"visited_{v}": float(v in order[:k]) for v in range(n)}
            if k > 0:
                lab.update(self._adj_row(inst, order[k - 1]))
            if k < n:
                lab.update({f"on_stack_{v}": float(v in stacks[k]) for v in range(n)})
                lab["depth"] = len(stacks[k])
            steps.append(lab)
        return [s], order, steps


@dataclass
class ShortestPath(_GraphTask):
    name = "path"
    summary = ("shortest path between two nodes (lexicographically smallest of the shortest); "
               "features: adjacency row, visited, distances from source and to target")
    n_prefix: ClassVar[int] = 2

    @property
    def features(self):
        return {**self._adj_specs(),
                **self._node_specs("visited", "binary", "node {} was already output"),
                "dist": FeatureSpec("numeric", "distance from the source of the node predicted here"),
                "dist_to_target": FeatureSpec("numeric", "distance from the node read here to the target"),
                **self._matrix_specs()}

    def random_instance(self, rng):
        s, t = rng.choice(self.n_nodes, size=2, replace=False)
        return {"edges": self.random_graph(rng), "source": int(s), "target": int(t)}

    def check_instance(self, inst):
        super().check_instance(inst)
        if inst["source"] == inst["target"]:
            raise TaskConfigError(f"{self.name}: source and target must differ")

    def solve(self, inst):
        n, s, t = self.n_nodes, inst["source"], inst["target"]
        self._edge_set(inst)
        path = shortest_path(n, inst["edges"], s, t)
        to_t = bfs_distances(n, inst["edges"], t)
        steps = []
        for k in range(len(path) + 1):
            lab = {f"visited_{v}": float(v in path[:k]) for v in range(n)}
            if k > 0:
                lab.update(self._adj_row(inst, path[k - 1]))
                lab["dist_to_target"] = to_t[path[k - 1]]
            if k < len(path):
                lab["dist"] = k
            steps.append(lab)
        return [s, t], path, steps


@dataclass
class TopoSort(_GraphTask):
    name = "topo_sort"
    summary = ("lexicographically smallest topological order of a random DAG; features: in-degrees, "
               "available nodes, successors, visited set")
    directed: ClassVar[bool] = True
    n_prefix: ClassVar[int] = 0

    @property
    def features(self):
        return {**self._adj_specs(),
                **self._node_specs("indeg", "numeric", "in-degree of node {} among the nodes not yet output"),
                **self._node_specs("available", "binary", "node {} has in-degree 0 and is not yet output"),
                **self._node_specs("visited", "binary", "node {} was already output"),
                **self._matrix_specs()}

    def random_graph(self, rng):
        return random_dag(self.n_nodes, self.n_edges, rng)

    def random_instance(self, rng):
        return {"edges": self.random_graph(rng)}

    def check_instance(self, inst):
        super().check_instance(inst)
        edges = [tuple(e) for e in inst["edges"]]
        if any((v, u) in set(edges) for u, v in edges):
            raise TaskConfigError(f"{self.name}: the graph has a cycle (an edge in both directions), "
                                  "so it is not a DAG")
        topo_trace(self.n_nodes, edges)   # raises TaskConfigError on a cycle

    def solve(self, inst):
        n = self.n_nodes
        self._edge_set(inst)
        order, indegs = topo_trace(n, inst["edges"])
        steps = []
        for k in range(n + 1):
            lab = {f"visited_{v}": float(v in order[:k]) for v in range(n)}
            if k > 0:
                lab.update(self._adj_row(inst, order[k - 1]))
            if k < n:
                lab.update({f"indeg_{v}": (float("nan") if indegs[k][v] < 0 else indegs[k][v]) for v in range(n)})
                lab.update({f"available_{v}": float(indegs[k][v] == 0) for v in range(n)})
            steps.append(lab)
        return [], order, steps


@dataclass
class MST(_GraphTask):
    max_weight: int = 16        # weights are distinct integers from 1..max_weight (>= n_edges)

    name = "mst"
    summary = ("minimum spanning tree by Kruskal, its edges in the order chosen; features: union-find "
               "components, edge weight")
    n_prefix: ClassVar[int] = 0
    edge_width: ClassVar[int] = 3

    def __post_init__(self):
        super().__post_init__()
        if not _is_int(self.max_weight) or self.max_weight < self.n_edges:
            raise TaskConfigError(f"{self.name}: max_weight={self.max_weight!r} must be an integer >= n_edges="
                                  f"{self.n_edges}, so that every edge gets a distinct weight (a unique MST)")

    @property
    def specials(self):
        return ["=", "<EOS>", "<PAD>"] + [f"w{i}" for i in range(1, self.max_weight + 1)]

    @property
    def answer_len(self):
        return 2 * (self.n_nodes - 1)

    @property
    def features(self):
        return {**self._node_specs("comp", "categorical",
                                   "union-find component (smallest member) of node {} before the edge predicted here is added",
                                   self.n_nodes),
                "weight": FeatureSpec("numeric", "weight of the MST edge predicted here"),
                **self._matrix_specs()}

    def random_instance(self, rng):
        edges = self.random_graph(rng)
        w = rng.choice(self.max_weight, size=len(edges), replace=False) + 1
        return {"edges": [(u, v, int(x)) for (u, v), x in zip(edges, w)]}

    def check_instance(self, inst):
        super().check_instance(inst)
        ws = [e[2] for e in inst["edges"]]
        if len(set(ws)) != len(ws) or not all(1 <= x <= self.max_weight for x in ws):
            raise TaskConfigError(f"{self.name}: edge weights must be distinct integers in 1..{self.max_weight}")

    def edge_tokens(self, inst):
        w0 = self.tok("w1")
        return [[u, v, w0 + w - 1] for u, v, w in inst["edges"]]

    def solve(self, inst):
        n = self.n_nodes
        self._edge_set(inst)
        tree, comps = kruskal_trace(n, [tuple(e) for e in inst["edges"]])
        answer, steps = [], []
        for (u, v, w), comp in zip(tree, comps):
            a, b = min(u, v), max(u, v)
            answer += [a, b]
            lab = {f"comp_{x}": comp[x] for x in range(n)}
            lab["weight"] = w
            steps += [lab, dict(lab)]     # both tokens of the edge
        steps.append({})                  # <EOS>
        return [], answer, steps


TASK_CLASSES = (BFS, DFS, ShortestPath, TopoSort, MST)
