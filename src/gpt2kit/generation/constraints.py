"""Constraints for constrained beam search: token sequences the output must contain.

transformers' API (`PhrasalConstraint`, `DisjunctiveConstraint`, `ConstraintListState`, and `Constraint` to
subclass), with the behaviour of transformers 4.55, the last release that ran constrained beam search itself,
so that the beams rank the same. Pure Python: a constraint walks token ids one at a time.

A constraint is a small state machine. `advance()` names the token(s) that would make progress,
`does_advance(t)` says whether t would, `update(t)` takes t and returns (stepped, completed, reset), and
`remaining()` counts the tokens still missing. `ConstraintListState` tracks a list of them over a sequence:
the completed ones, at most one in progress, the pending ones, and a "bank" (how much is fulfilled) by which
constrained beam search ranks its candidates.
"""

from __future__ import annotations

from typing import Any


class Constraint:
    """Base class of a constraint; subclasses implement the six methods below."""

    seqlen: int = 1
    completed: bool = False

    def advance(self) -> int | list[int] | None:
        """The token, or the list of tokens, that would make progress; None when completed."""
        raise NotImplementedError(f"{type(self).__name__} must implement advance()")

    def does_advance(self, token_id: int) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must implement does_advance(token_id)")

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        """Take token_id -> (stepped, completed, reset)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(token_id)")

    def reset(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement reset()")

    def remaining(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement remaining()")

    def copy(self, stateful: bool = False) -> Constraint:
        raise NotImplementedError(f"{type(self).__name__} must implement copy(stateful=False)")


def _check_ids(token_ids: Any, name: str) -> None:
    if not isinstance(token_ids, list) or len(token_ids) == 0:
        raise ValueError(f"{name} has to be a non-empty list of token ids, but is {token_ids!r}")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in token_ids):
        raise ValueError(f"each token id in {name} has to be an integer >= 0, but got {token_ids!r}")


def _check_token(token_id: Any) -> None:
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise TypeError(f"token_id has to be an int, got {token_id!r} of type {type(token_id).__name__}")


class PhrasalConstraint(Constraint):
    """These tokens, in this order, must appear somewhere in the output.

    >>> c = PhrasalConstraint([5, 6])
    >>> c.advance(), c.update(5), c.advance(), c.update(6), c.remaining()
    (5, (True, False, False), 6, (True, True, False), 0)
    """

    def __init__(self, token_ids: list[int]):
        _check_ids(token_ids, "token_ids")
        self.token_ids = token_ids
        self.seqlen = len(token_ids)
        self.fulfilled_idx = -1  # index of the last token matched so far
        self.completed = False

    def advance(self) -> int | None:
        return None if self.completed else self.token_ids[self.fulfilled_idx + 1]

    def does_advance(self, token_id: int) -> bool:
        _check_token(token_id)
        return not self.completed and token_id == self.token_ids[self.fulfilled_idx + 1]

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        _check_token(token_id)
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.fulfilled_idx += 1
        self.completed = self.fulfilled_idx == self.seqlen - 1
        return True, self.completed, False

    def reset(self) -> None:
        # transformers resets to 0, not -1: only its own self-test ever reads a reset constraint (the list
        # state replaces it by a fresh copy), so this is kept for the same behaviour everywhere.
        self.completed = False
        self.fulfilled_idx = 0

    def remaining(self) -> int:
        return self.seqlen - (self.fulfilled_idx + 1)

    def copy(self, stateful: bool = False) -> PhrasalConstraint:
        new = PhrasalConstraint(self.token_ids)
        if stateful:
            new.fulfilled_idx = self.fulfilled_idx
            new.completed = self.completed
        return new


class _Trie:
    """The alternatives of a DisjunctiveConstraint as nested dicts: token -> the tokens that may follow."""

    def __init__(self, alternatives: list[list[int]]):
        self.max_height = max(len(ids) for ids in alternatives)
        self.root: dict = {}
        for ids in alternatives:
            level = self.root
            for t in ids:
                level = level.setdefault(t, {})
        if self._leaves(self.root) != len(alternatives):
            raise ValueError(
                "each list in nested_token_ids must not be a prefix of (or equal to) another one, but got "
                f"{alternatives!r}; drop the longer ones"
            )

    def next_tokens(self, prefix: list[int]) -> list[int]:
        level = self.root
        for t in prefix:
            level = level[t]
        return list(level)

    def reached_leaf(self, prefix: list[int]) -> bool:
        return not self.next_tokens(prefix)

    def _leaves(self, node: dict) -> int:
        return sum(self._leaves(child) for child in node.values()) if node else 1


class DisjunctiveConstraint(Constraint):
    """One of these token sequences must appear (e.g. the forms of a word: " rain", " rains", " raining").

    >>> c = DisjunctiveConstraint([[1, 2], [1, 3, 4]])
    >>> c.advance(), c.update(1), sorted(c.advance()), c.update(3), c.remaining()
    ([1], (True, False, False), [2, 3], (True, False, False), 1)
    """

    def __init__(self, nested_token_ids: list[list[int]]):
        if not isinstance(nested_token_ids, list) or len(nested_token_ids) == 0:
            raise ValueError(
                f"nested_token_ids has to be a non-empty list of lists, but is {nested_token_ids!r}"
            )
        if any(not isinstance(ids, list) for ids in nested_token_ids):
            raise ValueError(f"nested_token_ids has to be a list of lists, but is {nested_token_ids!r}")
        for ids in nested_token_ids:
            _check_ids(ids, "each list in nested_token_ids")
        self.trie = _Trie(nested_token_ids)
        self.token_ids = nested_token_ids
        self.seqlen = self.trie.max_height
        self.current_seq: list[int] = []
        self.completed = False

    def advance(self) -> list[int] | None:
        return self.trie.next_tokens(self.current_seq) or None

    def does_advance(self, token_id: int) -> bool:
        _check_token(token_id)
        return token_id in self.trie.next_tokens(self.current_seq)

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        _check_token(token_id)
        stepped = self.does_advance(token_id)
        if stepped:
            self.current_seq.append(token_id)
        else:
            self.reset()
        self.completed = self.trie.reached_leaf(self.current_seq)
        return stepped, self.completed, not stepped

    def reset(self) -> None:
        self.completed = False
        self.current_seq = []

    def remaining(self) -> int:
        return 0 if self.completed else self.seqlen - len(self.current_seq)

    def copy(self, stateful: bool = False) -> DisjunctiveConstraint:
        new = DisjunctiveConstraint(self.token_ids)
        if stateful:
            # The progress list is shared, not copied, as in transformers 4.55: its constrained beam search
            # extends a copy and reads the original after, and the beams' ranking depends on that.
            new.current_seq = self.current_seq
            new.completed = self.completed
        return new


class ConstraintListState:
    """Progress through a list of constraints along one sequence.

    >>> state = ConstraintListState([PhrasalConstraint([5, 6]), PhrasalConstraint([9])])
    >>> state.reset([1, 5, 6]); state.get_bank(), state.completed, state.advance()
    (2, False, [9])
    """

    def __init__(self, constraints: list[Constraint]):
        self.constraints = constraints
        self.max_seqlen = max(c.seqlen for c in constraints)
        self.n_constraints = len(constraints)
        self.completed = False
        self.init_state()

    def init_state(self) -> None:
        self.complete_constraints: list[Constraint] = []
        self.inprogress_constraint: Constraint | None = None
        self.pending_constraints = [c.copy(stateful=False) for c in self.constraints]

    def get_bank(self) -> int:
        """How much is fulfilled: max_seqlen per completed constraint, plus the in-progress one's progress."""
        partial = 0
        if self.inprogress_constraint is not None:
            partial = self.max_seqlen - self.inprogress_constraint.remaining()
        return len(self.complete_constraints) * self.max_seqlen + partial

    def advance(self) -> list[int] | None:
        """The tokens that would make progress: the in-progress constraint's, else every pending one's."""
        sources = (
            [self.inprogress_constraint]
            if self.inprogress_constraint is not None
            else self.pending_constraints
        )
        tokens: list[int] = []
        for constraint in sources:
            step = constraint.advance()
            if isinstance(step, int):
                tokens.append(step)
            elif isinstance(step, list):
                tokens.extend(step)
        return tokens or None

    def reset(self, token_ids: list[int] | None) -> None:
        """Start over and walk token_ids (stopping once every constraint is met)."""
        self.init_state()
        for token in token_ids or []:
            self.add(token)
            if self.completed:
                break

    def add(self, token_id: int) -> tuple[bool, bool]:
        """Take one token -> (complete, stepped) for the constraint it touched."""
        if not isinstance(token_id, int):
            raise TypeError(f"token_id should be an int, but is {token_id!r}")
        if self.completed:
            return True, False
        complete = stepped = False
        if self.inprogress_constraint is not None:
            stepped, complete, reset = self.inprogress_constraint.update(token_id)
            if reset:
                # the token broke the phrase: it goes back to pending, fresh (the token is not retried)
                self.pending_constraints.append(self.inprogress_constraint.copy(stateful=False))
                self.inprogress_constraint = None
            if complete:
                self.complete_constraints.append(self.inprogress_constraint)
                self.inprogress_constraint = None
                if not self.pending_constraints:
                    self.completed = True
            return complete, stepped
        for i, constraint in enumerate(self.pending_constraints):
            if not constraint.does_advance(token_id):
                continue
            stepped, complete, _ = constraint.update(token_id)
            if not stepped:
                raise RuntimeError(
                    f"{type(constraint).__name__}.update() made no progress although does_advance() was True"
                )
            if complete:
                self.complete_constraints.append(constraint)
            else:
                self.inprogress_constraint = constraint
            del self.pending_constraints[i]
            if not self.pending_constraints and self.inprogress_constraint is None:
                self.completed = True
            break  # one token advances one constraint at most
        return complete, stepped

    def copy(self, stateful: bool = True) -> ConstraintListState:
        new = ConstraintListState(self.constraints)
        if stateful:
            new.complete_constraints = [c.copy(stateful=True) for c in self.complete_constraints]
            if self.inprogress_constraint is not None:
                new.inprogress_constraint = self.inprogress_constraint.copy(stateful=True)
            new.pending_constraints = [c.copy() for c in self.pending_constraints]
        return new


def constraints_from_config(constraints: list | None, force_words_ids: list | None) -> list[Constraint]:
    """generate()'s constraints plus force_words_ids (a list of ids: a phrase; a list of id lists: one of
    them), in that order."""
    out = list(constraints or [])
    for c in out:
        if not isinstance(c, Constraint):
            raise TypeError(
                f"constraints must hold gpt2kit Constraint objects (PhrasalConstraint, DisjunctiveConstraint), "
                f"got {type(c).__name__}"
            )
    for word in force_words_ids or []:
        out.append(DisjunctiveConstraint(word) if isinstance(word[0], list) else PhrasalConstraint(word))
    return out
