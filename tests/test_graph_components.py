"""The plain-dict traffic graph of meshc.graph finds the same strongly connected components
as networkx, in an order where every edge between components points forward."""

from __future__ import annotations

import random

import networkx as nx

from meshc.graph import _Traffic


def test_components_match_networkx_and_are_topologically_ordered() -> None:
    rnd = random.Random(7)
    for trial in range(300):
        n = rnd.randrange(1, 30)
        nodes = [f"s{i:02d}" for i in rnd.sample(range(n), n)]
        edges = [(rnd.choice(nodes), rnd.choice(nodes)) for _ in range(rnd.randrange(0, 3 * n))]
        g = _Traffic(nodes)
        ref = nx.DiGraph()
        ref.add_nodes_from(nodes)
        for u, v in edges:
            g.add_edge(u, v, rnd.random() < 0.5)
            ref.add_edge(u, v)
        g.find_components()
        assert sorted(map(sorted, g.sccs)) == sorted(map(sorted, nx.strongly_connected_components(ref))), trial
        for u, v in ref.edges:
            assert g.component[u] <= g.component[v], (trial, u, v)
        assert {v: sorted(g.pred[v]) for v in nodes} == {v: sorted(ref.predecessors(v)) for v in nodes}


def test_a_deep_chain_needs_no_recursion() -> None:
    nodes = [f"s{i:05d}" for i in range(20_000)]
    g = _Traffic(nodes)
    for u, v in zip(nodes, nodes[1:], strict=False):
        g.add_edge(u, v, True)
    g.add_edge(nodes[-1], nodes[0], False)
    g.find_components()
    assert len(g.sccs) == 1 and len(g.sccs[0]) == len(nodes)
