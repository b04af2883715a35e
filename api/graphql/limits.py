"""Depth, alias and cost limits of an operation, measured on its syntax tree before anything runs
(docs/graphql.md, "Limits").

- depth: nesting of selections below the operation (fragments do not add a level);
- aliases: aliased fields in the operation, fragments expanded;
- cost: every field costs 1 plus its children's cost times its list size: the `first` argument,
  `pagination.pageSize`, or the field's default page size (LIST_SIZES). A page of 500 incidents
  with 500 events each is 250,000 times the event's fields: refused long before it runs.

Introspection (`__schema`, `__type`) is not counted: GraphiQL's introspection query is deeper
than any real query, and it reads no data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from graphql import GraphQLError
from graphql.language import ast

from app.config.graphql import GraphQLSettings

# Lists without a `first` argument: the most items they answer with (or a typical size).
LIST_SIZES = {"incidents": 50, "timeline": 20, "events": 20, "members": 10, "correlationGroups": 50, "teams": 100,
              "schedules": 100, "escalationPolicies": 100, "services": 100, "bySeverity": 5, "byCategory": 20,
              "groups": 50, "actionsTaken": 10, "actions_taken": 10, "changedFields": 10}
ONE = ("edges", "nodes")  # a connection's lists: the connection field already carries the page size


@dataclass(frozen=True)
class Measure:
    depth: int
    aliases: int
    cost: int


class _Walker:
    def __init__(self, fragments: Mapping[str, ast.FragmentDefinitionNode], variables: Mapping[str, Any]) -> None:
        self.fragments = fragments
        self.variables = variables
        self.aliases = 0

    def _int(self, node: ast.ValueNode | None) -> int | None:
        if isinstance(node, ast.IntValueNode):
            return int(node.value)
        if isinstance(node, ast.VariableNode):
            value = self.variables.get(node.name.value)
            return value if isinstance(value, int) else None
        return None

    def size(self, field: ast.FieldNode) -> int:
        name = field.name.value
        for argument in field.arguments or ():
            if argument.name.value == "first":
                found = self._int(argument.value)
                if found is not None:
                    return max(found, 1)
            if argument.name.value == "pagination" and isinstance(argument.value, ast.ObjectValueNode):
                for item in argument.value.fields:
                    if item.name.value == "pageSize":
                        found = self._int(item.value)
                        if found is not None:
                            return max(found, 1)
        return LIST_SIZES.get(name, 1)

    def selection(self, selection_set: ast.SelectionSetNode | None, seen: frozenset[str]) -> tuple[int, int]:
        """(depth, cost) of a selection set."""
        if selection_set is None:
            return 0, 0
        depth, cost = 0, 0
        for node in selection_set.selections:
            if isinstance(node, ast.FieldNode):
                if node.name.value.startswith("__"):
                    continue
                if node.alias is not None:
                    self.aliases += 1
                child_depth, child_cost = self.selection(node.selection_set, seen)
                depth = max(depth, child_depth + 1)
                multiplier = 1 if node.name.value in ONE else self.size(node)
                cost += 1 + multiplier * child_cost
            elif isinstance(node, ast.InlineFragmentNode):
                child_depth, child_cost = self.selection(node.selection_set, seen)
                depth, cost = max(depth, child_depth), cost + child_cost
            elif isinstance(node, ast.FragmentSpreadNode):
                name = node.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:  # unknown or cyclic: validation reports it
                    continue
                child_depth, child_cost = self.selection(fragment.selection_set, seen | {name})
                depth, cost = max(depth, child_depth), cost + child_cost
        return depth, cost


def measure(document: ast.DocumentNode, operation: ast.OperationDefinitionNode,
            variables: Mapping[str, Any] | None = None) -> Measure:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, ast.FragmentDefinitionNode)}
    walker = _Walker(fragments, variables or {})
    depth, cost = walker.selection(operation.selection_set, frozenset())
    return Measure(depth, walker.aliases, cost)


def check(document: ast.DocumentNode, operation: ast.OperationDefinitionNode, variables: Mapping[str, Any] | None,
          settings: GraphQLSettings) -> list[GraphQLError]:
    """The limit errors of an operation (empty when it may run)."""
    found = measure(document, operation, variables)
    errors = []
    if found.depth > settings.max_depth:
        errors.append(GraphQLError(
            f"query depth {found.depth} exceeds the limit of {settings.max_depth} (graphql.max_depth)",
            extensions={"code": "query_too_deep", "depth": found.depth, "max_depth": settings.max_depth}))
    if found.aliases > settings.max_aliases:
        errors.append(GraphQLError(
            f"{found.aliases} aliases exceed the limit of {settings.max_aliases} (graphql.max_aliases)",
            extensions={"code": "too_many_aliases", "aliases": found.aliases, "max_aliases": settings.max_aliases}))
    if found.cost > settings.max_cost:
        errors.append(GraphQLError(
            f"query cost {found.cost} exceeds the limit of {settings.max_cost} (graphql.max_cost): ask for "
            f"smaller pages (first, pagination.pageSize, events(first:)) or fewer nested fields",
            extensions={"code": "query_too_costly", "cost": found.cost, "max_cost": settings.max_cost}))
    return errors
