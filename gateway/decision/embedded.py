"""The embedded engine: Rego evaluated in-process by regorus, a compiled program per thread, data loaded once.

Decisions run on regorus' RVM: the policies are compiled once into a program (`regorus.Program`) that a
virtual machine (`regorus.Rvm`) runs for each input, about four times as fast as the tree-walking
`regorus.Engine`. The tree-walking engine still serves what the RVM cannot: the Rego tests (they use
`with`), coverage, and the tables the bundle loader evaluates once (`bundle.POLICY_TABLES`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any

import regorus

from gateway.decision.bundle import DATA_ROOT, DECISION_PACKAGE, DECISION_RULE, PolicyBundle, first_line
from gateway.decision.errors import MalformedDecision, PolicySourceError
from gateway.decision.rvm_verified import rvm_verified

_RULE_PATH = f"data.{DECISION_PACKAGE}.{DECISION_RULE}"
# What eval_rule_as_json and the RVM answer for a rule without a value, as JSON text.
_UNDEFINED = '"<undefined>"'
# The RVM's run-to-completion mode, which costs a fraction of its suspendable mode (1) per rule body and
# function call. It mis-evaluates one construct (docs/policy.md, "Engines"), which build_vm refuses.
_RVM_RUN_TO_COMPLETION = 0
# How the RVM reports its fixed instruction limit (25,000 in regorus 0.13; the binding cannot raise it).
_INSTRUCTION_LIMIT = "exceeded maximum instruction limit"
# One instruction of Program.generate_listing(): its number, opcode (a block's end is `} CompEnd` or
# `} continue`) and operands.
_LISTING_LINE = re.compile(r"^(\d+):\s+(?:\}\s+)?(\w+)\s*(.*)$")


def build_engine(bundle: PolicyBundle) -> regorus.Engine:
    """A tree-walking regorus engine with every policy of the bundle parsed and its data added."""
    engine = regorus.Engine()
    for path, source in bundle.policies:
        try:
            engine.add_policy(path, source)
        except RuntimeError as exc:
            raise PolicySourceError(bundle.root / path, first_line(exc)) from None
    engine.add_data({DATA_ROOT: bundle.data_document()})
    return engine


def evaluate_rule(engine: regorus.Engine, rule: str = _RULE_PATH) -> object:
    """Evaluate a rule as JSON (eval_rule fails on sets of arrays); MalformedDecision when undefined."""
    value = engine.eval_rule_as_json(rule)
    if value == _UNDEFINED:
        raise MalformedDecision(f"{rule} is undefined for this input")
    return json.loads(value)


def build_vm(bundle: PolicyBundle) -> regorus.Rvm:
    """An RVM running the bundle's policies compiled for the decision rule, with the bundle's data set.

    regorus programs and VMs are bound to the thread that made them (using one from another thread
    panics), so each thread builds its own.
    """
    data_json = json.dumps({DATA_ROOT: bundle.data_document()})
    try:
        program = regorus.Program.compile_from_modules(data_json, list(bundle.policies), [_RULE_PATH])
    except RuntimeError as exc:
        raise PolicySourceError(bundle.root, f"policies do not compile: {first_line(exc)}") from None
    misread = comprehension_conditions(program)
    if misread:
        raise PolicySourceError(
            bundle.root,
            f"the RVM would misread the conditions at {', '.join(misread)}: a comprehension must test"
            " its conditions inside its own `some` iteration",
        )
    vm = regorus.Rvm()
    vm.set_execution_mode(_RVM_RUN_TO_COMPLETION)
    vm.load_program(program)
    vm.set_data_json(data_json)
    return vm


def comprehension_conditions(program: regorus.Program) -> list[str]:
    """The conditions a comprehension tests outside its own loops (`{m | cond; m := 1}`), as "<rule> pc <n>".

    The RVM's run-to-completion mode (regorus 0.13) mis-evaluates them: when such a condition fails, the
    comprehension skips the instruction that closes it, and a condition failing later in the same rule
    resumes after that comprehension instead of failing its body, which loops until the instruction limit
    or yields an answer from the wrong clause. A condition inside one of the comprehension's loops only
    ends that turn of the loop, as it should.
    """
    rule = ""
    blocks: list[str] = []  # the comprehensions and loops open at this point of the program
    found = []
    for line in program.generate_listing().splitlines():
        # e.g. `030:     Assert   assert r25   ; …`, `037:   } CompEnd`, `002: RuleInit  data.x.r → r0 {`
        step = _LISTING_LINE.match(line)
        if step is None:
            continue
        pc, opcode, operands = step.groups()
        if opcode == "RuleInit":
            rule = operands.split(" ")[0]
            blocks.clear()
        elif opcode in ("CompBegin", "LoopStart"):
            blocks.append(opcode)
        elif opcode in ("CompEnd", "continue"):
            blocks.pop()
        elif opcode.startswith("Assert") and blocks[-1:] == ["CompBegin"]:
            found.append(f"{rule} pc {int(pc)}")
    return found


def evaluate_vm(vm: regorus.Rvm, policy_input: str) -> str:
    """The decision rule's value as JSON text, for an input as JSON text; MalformedDecision when undefined."""
    vm.set_input_json(policy_input)
    value: str = vm.execute_entry_point(_RULE_PATH)
    if value == _UNDEFINED:
        raise MalformedDecision(f"{_RULE_PATH} is undefined for this input")
    return value


class EmbeddedEngine:
    """Evaluates in this process. regorus VMs are bound to their thread, so each thread builds its own.

    An input so large that the RVM reaches its fixed instruction limit is decided by the tree-walking
    engine instead, which has none and gives the same answers: a legitimate request is never denied for
    the engine's budget alone. A bundle with policy modules the RVM was not verified on (`rvm_verified`)
    is decided by the tree-walking engine throughout.
    """

    name = "embedded"

    def __init__(self, bundle: PolicyBundle) -> None:
        # The bundle and whether the RVM may run it, read and replaced as one: a reload on another thread
        # never pairs one bundle with the other's verdict.
        self._current = (bundle, rvm_verified(bundle.policies))
        self._local = threading.local()
        self._unlimited = TreeWalkingEngine(bundle)

    @property
    def _bundle(self) -> PolicyBundle:
        return self._current[0]

    @property
    def bundle_digest(self) -> str:
        return self._current[0].digest

    @property
    def on_rvm(self) -> bool:
        """Whether decisions run on the RVM (the bundle's modules are all verified on it)."""
        return self._current[1]

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        """Switch to a new bundle; each thread rebuilds its VM on its next evaluation."""
        on_rvm = rvm_verified(bundle.policies)
        self._unlimited.replace_bundle(bundle)
        self._current = (bundle, on_rvm)

    def _vm(self, bundle: PolicyBundle) -> regorus.Rvm:
        if getattr(self._local, "digest", None) != bundle.digest:
            self._local.vm = build_vm(bundle)
            self._local.digest = bundle.digest
        vm: regorus.Rvm = self._local.vm
        return vm

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        return json.loads(self.evaluate_json(json.dumps(dict(policy_input))))

    def evaluate_json(self, policy_input: str) -> str:
        """`evaluate` with the input and the answer as JSON text: decide() hands the model's own JSON and
        validates the answer from the text."""
        bundle, on_rvm = self._current
        if not on_rvm:
            return json.dumps(self._unlimited.evaluate(json.loads(policy_input)))
        try:
            return evaluate_vm(self._vm(bundle), policy_input)
        except RuntimeError as exc:
            if _INSTRUCTION_LIMIT not in str(exc):
                raise
        return json.dumps(self._unlimited.evaluate(json.loads(policy_input)))


class TreeWalkingEngine:
    """The same policies on the tree-walking `regorus.Engine`, one per thread: a fourth of the RVM's speed.

    It has no instruction limit, so it can evaluate what the RVM would stop (docs/policy.md, "Engines"), and
    it is the engine the Rego tests run on; the gateway decides with EmbeddedEngine.
    """

    name = "embedded-tree-walking"

    def __init__(self, bundle: PolicyBundle) -> None:
        self._bundle = bundle
        self._local = threading.local()

    @property
    def bundle_digest(self) -> str:
        return self._bundle.digest

    def replace_bundle(self, bundle: PolicyBundle) -> None:
        """Switch to a new bundle; each thread rebuilds its engine on its next evaluation."""
        self._bundle = bundle

    def _engine(self) -> regorus.Engine:
        bundle = self._bundle
        if getattr(self._local, "digest", None) != bundle.digest:
            self._local.engine = build_engine(bundle)
            self._local.digest = bundle.digest
        engine: regorus.Engine = self._local.engine
        return engine

    def evaluate(self, policy_input: Mapping[str, Any]) -> object:
        engine = self._engine()
        engine.set_input(dict(policy_input))
        # eval_rule hands back Python values without a JSON round trip; the decision object holds no sets,
        # the one shape eval_rule cannot convert, and should a policy ever return one, the error it raises
        # is a failed, hence denied, decision.
        value = engine.eval_rule(_RULE_PATH)
        if value is None:
            raise MalformedDecision(f"{_RULE_PATH} is undefined for this input")
        return value
