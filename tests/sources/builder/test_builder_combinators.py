"""``all``, ``any`` and ``not``, nested any way, agree with intersection, union and complement (within the profiles)
of the members of their parts, each part's members computed by its own compiled statement."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builder_harness import LAYOUTS, Source, audience, layout_id, members, open_source

LEAVES = [
    '{ performed = "Order", within = "30d" }',
    '{ performed = "View", at_least = 2 }',
    '{ did_not_perform = "Signup", within = "60d" }',
    '{ trait = "country", op = "=", value = "FR" }',
    '{ trait = "vip", op = "=", value = true }',
    '{ performed = "Order", where = [{ property = "amount", op = ">", value = 20 }] }',
    '{ trait = "age", op = "<", value = 40 }',
    '{ performed = "Order", exactly = 1, between = ["60d", "20d"] }',
]


@dataclass(frozen=True)
class Tree:
    op: str  # leaf, all, any, not
    leaf: int = 0
    parts: tuple[Tree, ...] = ()

    def toml(self) -> str:
        if self.op == "leaf":
            return LEAVES[self.leaf]
        if self.op == "not":
            return f"{{ not = {self.parts[0].toml()} }}"
        return f"{{ {self.op} = [{', '.join(p.toml() for p in self.parts)}] }}"

    def expected(self, leaves: dict[int, set[str]], universe: set[str]) -> set[str]:
        if self.op == "leaf":
            return leaves[self.leaf]
        sets = [p.expected(leaves, universe) for p in self.parts]
        if self.op == "not":
            return universe - sets[0]
        return set.intersection(*sets) if self.op == "all" else set.union(*sets)


trees = st.recursive(
    st.integers(0, len(LEAVES) - 1).map(lambda i: Tree("leaf", i)),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda ps: Tree("all", parts=tuple(ps))),
        st.lists(children, min_size=1, max_size=3).map(lambda ps: Tree("any", parts=tuple(ps))),
        children.map(lambda c: Tree("not", parts=(c,))),
    ),
    max_leaves=7,
)


@pytest.fixture(scope="module", params=LAYOUTS, ids=layout_id)
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    yield from open_source(request, tmp_path_factory)


@pytest.fixture(scope="module")
def leaf_members(source: Source) -> dict[int, set[str]]:
    """Each leaf's members by its own compiled statement (and, as a check, the reference's)."""
    out = {}
    for i, leaf in enumerate(LEAVES):
        got, expected = members(source, audience(leaf))
        assert got == expected
        out[i] = got
    assert len({frozenset(s) for s in out.values()}) == len(LEAVES), "leaves should be told apart"
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_all_any_not_are_set_operations(source: Source, leaf_members: dict[int, set[str]], tree: Tree) -> None:
    universe = {p.id for p in source.reference_data[0] if p.id is not None}
    got, _ = members(source, audience(tree.toml()))
    assert got == tree.expected(leaf_members, universe)
