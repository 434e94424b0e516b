"""Synthetic tasks of the xLSTM paper's small-scale evidence, generated on the fly and deterministic by seed.

Formal languages (xLSTM paper Sec. 4.1 and Fig. 4; tasks of Deletang et al. 2023, "Neural Networks and the
Chomsky Hierarchy"): ``sample(generator, batch, length)`` gives strings of one length L; the answer is read at
the last position (Bucket Sort: at each output position). Training batches mix lengths (``mixed_length_batch``:
each string its own length uniform in 3..40, right-padded, as in the public xLSTM formal-language configs), so
that every step carries the short strings whose answers gradient descent can fit first; test batches have one
length (40..256). ``sample`` returns

    inputs  (B, S) int64    token ids
    targets (B, S) int64    answer class where scored, IGNORE (-100) elsewhere

Multi-Query Associative Recall (xLSTM paper Sec. 4.2; Zoology, Arora et al. 2023): ``MQARTask``.

Token ids and answer classes share one range [0, vocab_size); a model predicts with its logits over the
first ``num_classes`` ids. The answers are computed here vectorised where possible; the tests check them
against independent brute-force computations on the decoded strings.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

__all__ = ["IGNORE", "FormalTask", "FORMAL_TASKS", "get_task", "mixed_length_batch", "MQARTask", "MQAR_QUERY_POWER",
           "mqar_query_power", "batch_generator", "rescaled"]

IGNORE = -100

# Zoology's power_a for the MQAR query positions (``MQARTask``): its MQAR configs draw the slots with weights ~1 / slot.
MQAR_QUERY_POWER = 0.01


def batch_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A fresh generator for batch ``index`` of ``stream`` (0 train, 1 validation, 2+ test) of run ``seed``:
    any batch can be regenerated without replaying the ones before it."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + stream * 7_919_993 + index * 104_729) % (2**63 - 1))
    return g


def rescaled(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance level, 1 when perfect."""
    return (accuracy - chance) / (1.0 - chance)


class FormalTask:
    """One formal-language task. Subclasses set the sizes and implement ``_sample``."""

    name: str
    num_inputs: int  # input symbols (plus any special tokens)
    num_classes: int  # answer classes
    # Chomsky-hierarchy level (Deletang et al. 2023), shown in tables.
    level: str = "R"

    @property
    def vocab_size(self) -> int:
        return max(self.num_inputs, self.num_classes)

    def chance(self, length: int) -> float:
        """Accuracy of guessing uniformly among the answer classes."""
        return 1.0 / self.num_classes

    def sample(self, generator: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, S), targets (B, S) for strings of ``length`` symbols (S may differ from length: Bucket
        Sort has 2 L positions, Missing Duplicate 2 (L // 2), Modular Arithmetic 2 ((L + 1) // 2) - 1)."""
        if not isinstance(length, int) or length < 2:
            raise ValueError(f"length must be an int >= 2, got {length!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        return self._sample(generator, batch, length)

    def _sample(self, g, batch, length):
        raise NotImplementedError

    def diagnostic(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """A per-string quantity (B,) of one-length test strings (B, S) that a shortcut solution would fail on
        beyond the values frequent in training; ``run_formal`` groups test accuracy by it
        (``diagnostic_edges``). None: the task has none."""
        return None

    # Lower edges of the groups of ``diagnostic`` values (the last group is open above).
    diagnostic_name: str = ""
    diagnostic_edges: tuple[int, ...] = ()

    @staticmethod
    def _last(inputs: torch.Tensor, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = answers
        return inputs, targets


class Parity(FormalTask):
    """Bits; answer: the number of ones mod 2."""

    name, num_inputs, num_classes = "parity", 2, 2

    def _sample(self, g, batch, length):
        x = torch.randint(0, 2, (batch, length), generator=g)
        return self._last(x, x.sum(1) % 2)


class EvenPairs(FormalTask):
    """Strings over {a=0, b=1}; answer 1 when the number of "ab" plus "ba" pairs is even."""

    name, num_inputs, num_classes = "even_pairs", 2, 2

    def _sample(self, g, batch, length):
        x = torch.randint(0, 2, (batch, length), generator=g)
        changes = (x[:, 1:] != x[:, :-1]).sum(1)
        return self._last(x, (changes % 2 == 0).long())


class CycleNavigation(FormalTask):
    """Actions 0 stay, 1 step +1, 2 step -1 on a cycle of 5 starting at 0; answer: the final position."""

    name, num_inputs, num_classes = "cycle_navigation", 3, 5

    def _sample(self, g, batch, length):
        x = torch.randint(0, 3, (batch, length), generator=g)
        return self._last(x, self._net(x) % 5)

    @staticmethod
    def _net(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0, 1, -1])[x].sum(1)  # (B,) steps +1 minus steps -1

    # The net displacement |#(+1) - #(-1)|: a model that counts steps on a line and looks the count up, instead of
    # tracking the position on the cycle, is right only for the counts frequent at the training lengths (about
    # +-sqrt(2 L / 3): 5 at L = 40).
    diagnostic_name = "net_displacement"
    diagnostic_edges = (0, 3, 6, 9, 13, 19, 31)

    def diagnostic(self, inputs):
        return self._net(inputs).abs()


# Modular arithmetic tokens: digits 0-4 are themselves, then the operators and brackets.
PLUS, MINUS, TIMES, OPEN, CLOSE = 5, 6, 7, 8, 9
ARITH_SYMBOLS = "01234+-*()"


class ModularArithmetic(FormalTask):
    """d op d op ... d (digits 0-4, op in + - *) with the usual precedence (* before + and -); answer mod 5.
    A string of length L has (L + 1) // 2 operands, i.e. 2 ((L + 1) // 2) - 1 tokens."""

    name, num_inputs, num_classes = "modular_arithmetic", 8, 5

    def _sample(self, g, batch, length):
        n = (length + 1) // 2
        digits = torch.randint(0, 5, (batch, n), generator=g)
        ops = torch.randint(PLUS, TIMES + 1, (batch, n - 1), generator=g)
        x = torch.empty(batch, 2 * n - 1, dtype=torch.long)
        x[:, 0::2], x[:, 1::2] = digits, ops
        total = torch.zeros(batch, dtype=torch.long)
        term = digits[:, 0].clone()  # the running product, with its sign
        for j in range(n - 1):  # a regular language: two numbers mod 5 are the whole state
            d, op = digits[:, j + 1], ops[:, j]
            times = op == TIMES
            total = torch.where(times, total, total + term)
            term = torch.where(times, term * d, torch.where(op == PLUS, d, -d)) % 5
        return self._last(x, (total + term) % 5)


class ModularArithmeticBrackets(FormalTask):
    """Random expressions of exactly L tokens over digits 0-4, + - * (binary; - also unary) and brackets;
    answer: the value mod 5 (context-free)."""

    name, num_inputs, num_classes, level = "modular_arithmetic_brackets", 10, 5, "CF"

    def _sample(self, g, batch, length):
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=g)))
        rows = [_random_expression(length, rng) for _ in range(batch)]
        x = torch.tensor(rows, dtype=torch.long)
        answers = torch.tensor([evaluate_expression(r) for r in rows], dtype=torch.long)
        return self._last(x, answers)


def _random_expression(n: int, rng: random.Random) -> list[int]:
    """Tokens of a random well-formed expression of exactly n tokens (iterative: no recursion limit)."""
    out: list[int] = []
    todo: list[int | tuple[str, int]] = [n]  # lengths still to expand, or tokens to emit
    while todo:
        item = todo.pop()
        if isinstance(item, tuple):
            out.append(item[1])
            continue
        if item == 1:
            out.append(rng.randrange(5))
        elif item == 2:
            out += [MINUS, rng.randrange(5)]
        elif rng.random() < 0.25:
            todo += [("tok", CLOSE), item - 2, ("tok", OPEN)]
        else:
            left = rng.randrange(1, item - 1)
            todo += [item - 1 - left, ("tok", rng.choice((PLUS, MINUS, TIMES))), left]
    return out


def evaluate_expression(tokens: list[int]) -> int:
    """Value mod 5 of an expression in ARITH tokens, left to right with one frame per open bracket: the sum of
    the finished terms, the sign and the running product of the current term (so * binds before + and -)."""
    frames = [[0, 1, 1]]  # [sum of finished terms, sign of current term, product of current term]
    expect_operand = True
    for t in tokens:
        frame = frames[-1]
        if expect_operand:
            if t == MINUS:  # unary minus: negates the current term
                frame[1] = -frame[1]
            elif t == OPEN:
                frames.append([0, 1, 1])
            else:
                frame[2] = frame[2] * t % 5
                expect_operand = False
        elif t == CLOSE:
            value = (frame[0] + frame[1] * frame[2]) % 5
            frames.pop()
            frames[-1][2] = frames[-1][2] * value % 5
        else:  # a binary operator
            if t != TIMES:  # + or -: the current term is finished
                frame[0] = (frame[0] + frame[1] * frame[2]) % 5
                frame[1], frame[2] = (1 if t == PLUS else -1), 1
            expect_operand = True
    top = frames[0]
    return (top[0] + top[1] * top[2]) % 5


class Majority(FormalTask):
    """Symbols 0-4; answer: the most frequent symbol (ties: the smallest)."""

    name, num_inputs, num_classes = "majority", 5, 5

    def _sample(self, g, batch, length):
        x = torch.randint(0, 5, (batch, length), generator=g)
        counts = torch.nn.functional.one_hot(x, 5).sum(1)  # (B, 5)
        return self._last(x, counts.argmax(1))  # argmax returns the first maximum


class MajorityCount(FormalTask):
    """Symbols 0-4; answer: how often the most frequent symbol occurs (classes 0..256). Chance: one guess
    among the possible counts ceil(L / 5)..L of that length."""

    name, num_inputs, num_classes, level = "majority_count", 5, 257, "CF"

    def chance(self, length: int) -> float:
        return 1.0 / (length - math.ceil(length / 5) + 1)

    def _sample(self, g, batch, length):
        if length >= self.num_classes:
            raise ValueError(f"length must be < {self.num_classes} for majority_count, got {length}")
        x = torch.randint(0, 5, (batch, length), generator=g)
        return self._last(x, torch.nn.functional.one_hot(x, 5).sum(1).max(1).values)


SORT_SEP, SORT_BLANK = 5, 6


class BucketSort(FormalTask):
    """Symbols 0-4, then a separator and L - 1 blanks; answer: the sorted string, one symbol per position
    from the separator on (2 L positions, L scored; per-symbol accuracy)."""

    name, num_inputs, num_classes, level = "bucket_sort", 7, 5, "CS"

    def _sample(self, g, batch, length):
        x = torch.randint(0, 5, (batch, length), generator=g)
        tail = torch.full((batch, length), SORT_BLANK)
        tail[:, 0] = SORT_SEP
        inputs = torch.cat([x, tail], 1)  # (B, 2 L)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, length:] = x.sort(1).values
        return inputs, targets


DUP_MASK = 2


class MissingDuplicate(FormalTask):
    """A bit string w of n = L // 2 symbols written twice, one symbol of the second copy replaced by a mask;
    answer: the masked bit (2 n positions)."""

    name, num_inputs, num_classes, level = "missing_duplicate", 3, 2, "CS"

    def _sample(self, g, batch, length):
        n = length // 2
        w = torch.randint(0, 2, (batch, n), generator=g)
        where = torch.randint(0, n, (batch,), generator=g)
        inputs = torch.cat([w, w], 1)  # (B, 2 n)
        rows = torch.arange(batch)
        inputs[rows, n + where] = DUP_MASK
        return self._last(inputs, w[rows, where])


FORMAL_TASKS: dict[str, FormalTask] = {t.name: t for t in (
    Parity(), EvenPairs(), CycleNavigation(), ModularArithmetic(), ModularArithmeticBrackets(), Majority(),
    MajorityCount(), BucketSort(), MissingDuplicate())}


def get_task(name: str) -> FormalTask:
    if name not in FORMAL_TASKS:
        raise ValueError(f"task must be one of {sorted(FORMAL_TASKS)}, got {name!r}")
    return FORMAL_TASKS[name]


def mixed_length_batch(task: FormalTask, generator: torch.Generator, batch: int, lo: int, hi: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose strings each have their own length, uniform in ``lo..hi`` (inclusive).

    Rows are grouped by length (one ``task.sample`` per distinct length) and right-padded to the longest row
    with the id ``task.vocab_size`` (the pad id: a model for mixed batches has ``task.vocab_size + 1`` ids);
    targets are IGNORE at the padding. Right padding leaves every scored position of a causal model unchanged:
    the pad tokens come after it. Returns inputs (B, S_max), targets (B, S_max).
    """
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
        raise ValueError(f"lengths lo..hi must be ints with 2 <= lo <= hi, got lo={lo!r}, hi={hi!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    lengths = torch.randint(lo, hi + 1, (batch,), generator=generator)
    groups = [task.sample(generator, int((lengths == n).sum()), n) for n in lengths.unique().tolist()]
    width = max(x.shape[1] for x, _ in groups)  # S_max (Bucket Sort and others have S != L)
    inputs = torch.cat([F.pad(x, (0, width - x.shape[1]), value=task.vocab_size) for x, _ in groups])
    targets = torch.cat([F.pad(t, (0, width - t.shape[1]), value=IGNORE) for _, t in groups])
    return inputs, targets  # (B, S_max) each


def mqar_query_power(query_power: float | None, restate_answers: bool = False, name: str = "query_power") -> float:
    """The query-position power ``MQARTask`` uses: ``query_power``, or None for the layout's own (Zoology's power
    law; uniform, 1.0, for the restated layout, which has no other). ``name``: the argument named in errors."""
    if query_power is None:
        return 1.0 if restate_answers else MQAR_QUERY_POWER
    if isinstance(query_power, bool) or not isinstance(query_power, (int, float)) or not 0 < query_power < math.inf:
        raise ValueError(f"{name} must be a positive number, got {query_power!r}")
    if restate_answers and query_power != 1.0:
        raise ValueError(f"{name} must be 1.0 (uniform) with the restated layout (restate_answers), got {query_power!r}")
    return float(query_power)


class MQARTask:
    """Multi-Query Associative Recall in Zoology's layout: ``num_pairs`` key-value pairs k1 v1 ... kn vn (distinct
    keys from the lower half of the vocabulary, distinct values from the upper half, token 0 the filler); later,
    every key appears once more at an even offset, and the prediction at that position is scored against its
    value. The value is not in the input after the query, so every query needs recall.

    Where the queries go: the (S - 2n) / 2 even offsets after the context are slots 1, 2, ...; the slot of key j is
    the j-th draw without replacement with weights slot^(a - 1), a = ``query_power`` (Zoology's ``power_a``, 0.01 in
    its MQAR configs: about 1 / slot, so most queries sit soon after the context and the first keys tend to be
    asked first). ``query_power=1.0``: uniform slots, each queried by a random key, as this project drew them until
    2026-11-27 (the same draws as then).

    ``restate_answers=True``: the layout this project used before (until 2026-11-27), kept so that the runs made with
    it can be reproduced: each query is followed by its value in the input, values are drawn with replacement and
    the slots are uniform. The last query of a row can then be answered by elimination (the one value of the
    context not yet restated), a shortcut that Zoology's layout does not offer."""

    def __init__(self, seq_len: int, num_pairs: int, vocab_size: int = 8192, restate_answers: bool = False,
                 query_power: float | None = None) -> None:
        if not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(f"num_pairs must be a positive int, got {num_pairs!r}")
        if not isinstance(seq_len, int) or seq_len < 4 * num_pairs:
            raise ValueError(f"seq_len must be an int >= 4 * num_pairs = {4 * num_pairs}, got {seq_len!r}")
        if not isinstance(vocab_size, int) or vocab_size // 2 - 1 < num_pairs:
            raise ValueError(f"vocab_size {vocab_size!r} too small for {num_pairs} distinct keys")
        if not isinstance(restate_answers, bool):
            raise TypeError(f"restate_answers must be a bool, got {restate_answers!r}")
        self.seq_len, self.num_pairs, self.vocab_size = seq_len, num_pairs, vocab_size
        self.restate_answers, self.query_power = restate_answers, mqar_query_power(query_power, restate_answers)
        self.num_classes = vocab_size

    def chance(self, length: int | None = None) -> float:
        return 1.0 / (self.vocab_size - self.vocab_size // 2)

    def sample(self, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, S), targets (B, S): the value at each query position, IGNORE elsewhere."""
        g, n, S, half = generator, self.num_pairs, self.seq_len, self.vocab_size // 2
        keys = torch.rand(batch, half - 1, generator=g).argsort(1)[:, :n] + 1  # (B, n) distinct, in 1..half-1
        if self.restate_answers:
            values = torch.randint(half, self.vocab_size, (batch, n), generator=g)
        else:
            values = torch.rand(batch, self.vocab_size - half, generator=g).argsort(1)[:, :n] + half  # distinct
        inputs = torch.zeros(batch, S, dtype=torch.long)
        inputs[:, 0:2 * n:2], inputs[:, 1:2 * n:2] = keys, values
        targets = torch.full_like(inputs, IGNORE)
        # query slots: n distinct even offsets after the context (the odd offset after each stays filler, or holds
        # the restated value)
        slots = (S - 2 * n) // 2
        if self.query_power == 1.0:
            offset = torch.rand(batch, slots, generator=g).argsort(1)[:, :n] * 2 + 2 * n  # (B, n)
            order = torch.rand(batch, n, generator=g).argsort(1)  # which pair each slot queries
        else:
            # Gumbel top-k: the k-th largest of log(weight) + Gumbel noise is distributed as the k-th of successive
            # draws without replacement, which is how Zoology draws them (numpy's choice, replace=False, p=weights)
            log_weight = (self.query_power - 1.0) * torch.arange(1, slots + 1, dtype=torch.float64).log()
            u = torch.rand(batch, slots, generator=g, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
            offset = (log_weight - (-u.log()).log()).topk(n, dim=1).indices * 2 + 2 * n  # (B, n): key j's query
            order = torch.arange(n).expand(batch, n)
        rows = torch.arange(batch)[:, None]
        inputs[rows, offset] = keys.gather(1, order)
        if self.restate_answers:
            inputs[rows, offset + 1] = values.gather(1, order)
        targets[rows, offset] = values.gather(1, order)
        return inputs, targets
