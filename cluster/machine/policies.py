"""Policies and operator policies (RabbitMQ 3.10's ``rabbitmqctl set_policy`` /
``set_operator_policy``), replicated: per virtual host, a name, a pattern searched in queue
and exchange names, what it applies to (queues, exchanges, all), a priority and a definition.

Which applies (rabbit_policy): of the policies whose pattern matches a queue's (exchange's)
name and whose ``apply-to`` covers it, the one of highest priority, only that one (equal
priorities: the first name in sorted order); likewise one operator policy. Their effective
definition is the policy's with the operator policy's keys merged in, the lower value
winning where both have one (operator policies cap: rabbit_policies' merge_policy_value).

How a queue's features come out of its arguments and that definition
(rabbit_amqqueue_process's ``process_args_policy``): message-ttl, expires, max-length,
max-length-bytes and delivery-limit take the lower of the x-argument and the policy;
dead-letter-exchange, dead-letter-routing-key, overflow and queue-mode take the x-argument
when the client gave one, else the policy. An exchange's alternate-exchange argument wins
over the policy's. A queue's ``arguments`` stay the client's (the API shows them so); the
resolved values go into its feature fields through qargs.configure.

Recomputed for every queue and exchange of the vhost when a policy is set or cleared, and
for a queue or exchange when it is declared. A live change acts as RabbitMQ's classic
queues do: a lower max-length drops (dead-letters, ``maxlen``) the excess at once; a new
message-ttl applies to messages arriving from then on (those already there keep the
expiry they entered with: checked against RabbitMQ 3.10); expires restarts its timer. The machine
keeps the headers it needs to republish a message only while the message sits in a queue
with a dead-letter exchange (messages.py): a message that came before a policy gave its
queue one is dropped, not dead-lettered, if it dies there (unless another such queue holds
it too); RabbitMQ would dead-letter it.

Patterns are RE2 (linear time in the name, whatever a tenant writes: a policymaker is a
tenant, and matching runs in the machine, on every member, for every declare). A pattern
RE2 cannot compile is refused at the edge (:func:`problem`); the machine treats one from
an older log as matching nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import re2

from cluster.machine import messages
from cluster.machine.features import enforce_max_length, expire_head, schedule, touch
from cluster.machine.names import name_problem
from cluster.machine.qargs import configure
from cluster.machine.state import Exchange, Msg, Policy, Queue, State, VHost, entry_id

if TYPE_CHECKING:
    from cluster import commands as C
    from cluster.effects import Effect

APPLY_TO = ("queues", "exchanges", "all")
MAX_PATTERN_BYTES = 4096
# Each policy is searched in the name of every queue declared in its vhost, in the machine
# that every tenant shares: the API bounds how many a vhost has (RabbitMQ has no bound; a
# vhost rarely needs more than a few).
MAX_PER_VHOST = 200

# --- validation (rabbit_policies / rabbit_mirror_queue_misc / rabbit_queue_location, 3.10) ---


def _int_at_least(low: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _name(v: Any) -> bool:
    return isinstance(v, str) and name_problem(v) is None


def _one_of(*values: str) -> Any:
    return lambda v: isinstance(v, str) and v in values


_ANY = lambda v: True  # noqa: E731

# key -> (valid?, RabbitMQ's message after the value)
_CHECKS: dict[str, tuple[Any, str]] = {
    "alternate-exchange": (_name, "is not a valid alternate exchange name"),
    "dead-letter-exchange": (_name, "is not a valid dead letter exchange name"),
    "dead-letter-routing-key": (_name, "is not a valid dead letter routing key"),
    "message-ttl": (_int_at_least(0), "is not a valid message TTL"),
    "expires": (_int_at_least(1), "is not a valid queue expiry"),
    "max-length": (_int_at_least(0), "is not a valid maximum length"),
    "max-length-bytes": (_int_at_least(0), "is not a valid maximum length in bytes"),
    "max-in-memory-length": (_int_at_least(0), "is not a valid maximum memory in bytes"),
    "max-in-memory-bytes": (_int_at_least(0), "is not a valid maximum memory in bytes"),
    "delivery-limit": (_int_at_least(0), "is not a valid delivery limit"),
    # RabbitMQ 3.12's key (3.10 has only the node's setting): node/amqp/connection.py
    "consumer-timeout": (_int_at_least(0), "is not a valid consumer timeout"),
    "queue-mode": (_one_of("default", "lazy"), "is not a valid queue-mode value"),
    "overflow": (_one_of("drop-head", "reject-publish", "reject-publish-dlx"),
                 "is not a valid overflow value"),
    # accepted and without effect here (every RaftMQ queue is replicated by Raft)
    "ha-mode": (_one_of("all", "exactly", "nodes"), "is not a valid ha-mode value"),
    "ha-params": (_ANY, ""),
    "ha-sync-mode": (_one_of("manual", "automatic"), "is not a valid ha-sync-mode value"),
    "ha-sync-batch-size": (_int_at_least(1), "is not a valid ha-sync-batch-size value"),
    "ha-promote-on-shutdown": (_one_of("when-synced", "always"),
                               "is not a valid ha-promote-on-shutdown value"),
    "ha-promote-on-failure": (_one_of("when-synced", "always"),
                              "is not a valid ha-promote-on-failure value"),
    "queue-master-locator": (_one_of("min-masters", "client-local", "random"),
                             "invalid queue-master-locator value"),
    "queue-leader-locator": (_one_of("client-local", "balanced", "random", "least-leaders"),
                             "is not a valid queue leader locator value"),
    "max-age": (lambda v: isinstance(v, str) and _max_age(v), "is not a valid max-age value"),
    "stream-max-segment-size-bytes": (_int_at_least(0),
                                      "is not a valid segment size in bytes"),
}
# Operator policies take only these, each capping the policy's (the lower value wins).
OPERATOR_KEYS = ("expires", "message-ttl", "max-length", "max-length-bytes",
                 "max-in-memory-length", "max-in-memory-bytes", "delivery-limit")
_HA_DEPENDENT = ("ha-params", "ha-sync-mode", "ha-promote-on-shutdown", "ha-sync-batch-size",
                 "ha-promote-on-failure")

# policy key -> the queue argument it stands for, and whether the lower value wins (else
# the client's argument wins)
QUEUE_KEYS: dict[str, tuple[str, bool]] = {
    "message-ttl": ("x-message-ttl", True),
    "expires": ("x-expires", True),
    "max-length": ("x-max-length", True),
    "max-length-bytes": ("x-max-length-bytes", True),
    "delivery-limit": ("x-delivery-limit", True),
    "max-in-memory-length": ("x-max-in-memory-length", True),
    "max-in-memory-bytes": ("x-max-in-memory-bytes", True),
    "dead-letter-exchange": ("x-dead-letter-exchange", False),
    "dead-letter-routing-key": ("x-dead-letter-routing-key", False),
    "overflow": ("x-overflow", False),
    "queue-mode": ("x-queue-mode", False),
    "consumer-timeout": ("x-consumer-timeout", False),
}


def _max_age(v: str) -> bool:
    units = ("Y", "M", "D", "h", "m", "s")
    return len(v) > 1 and v[-1] in units and v[:-1].isdigit()


def erlang_term(v: Any) -> str:
    """``v`` as RabbitMQ's messages print a JSON value (Erlang's ~p)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '<<"' + v.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(v, list | tuple):
        return "[" + ",".join(erlang_term(x) for x in v) + "]"
    if isinstance(v, dict):
        return "#{" + ",".join(f"{erlang_term(k)} => {erlang_term(x)}"
                              for k, x in sorted(v.items())) + "}"
    return repr(v)


def definition_problem(definition: Any, operator: bool = False) -> str | None:
    """What RabbitMQ's validation says about a definition (without its "Validation
    failed" frame), None if it passes."""
    if not isinstance(definition, dict):
        return "definition must be a JSON object"
    if not definition:
        return "no policy provided"
    known = OPERATOR_KEYS if operator else _CHECKS
    for key in sorted(definition):
        if key in known:
            valid, message = _CHECKS[key]
            if not valid(definition[key]):
                return f"{erlang_term(definition[key])} {message}"
    unknown = [k for k in sorted(definition) if k not in known]
    if unknown:
        items = ",".join(f"{{{erlang_term(k)},{erlang_term(definition[k])}}}" for k in unknown)
        return f"[{items}] are not recognised policy settings"
    if "ha-mode" not in definition:
        if any(k in definition for k in _HA_DEPENDENT):
            return ("ha-mode must be specified to specify ha-params, ha-sync-mode or "
                    "ha-promote-on-shutdown")
    elif definition["ha-mode"] in ("exactly", "nodes"):
        params = definition.get("ha-params")
        if definition["ha-mode"] == "exactly" and not (
                isinstance(params, int) and not isinstance(params, bool) and params > 0):
            return ('ha-mode="exactly" takes an integer, none given' if params is None else
                    f"ha-params should be a positive integer, actually was "
                    f"{erlang_term(params)}")
        if definition["ha-mode"] == "nodes" and not (
                isinstance(params, list | tuple) and params
                and all(isinstance(p, str) for p in params)):
            return ('ha-mode="nodes" takes a list, none given' if params is None else
                    f"ha-params should be a list, actually was {erlang_term(params)}")
    elif "ha-params" in definition:
        return f'ha-mode="{definition["ha-mode"]}" does not take parameters'
    return None


def pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"pattern should be a binary but was {erlang_term(pattern)}"
    try:
        size = len(pattern.encode())
    except UnicodeEncodeError:
        return "pattern should be regular expression but is invalid: not valid Unicode"
    if size > MAX_PATTERN_BYTES:
        return f"pattern should be at most {MAX_PATTERN_BYTES} bytes"
    try:
        re2.compile(pattern, _options())
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(
            e.args[0], bytes) else str(e)
        return (f"pattern should be regular expression but is invalid: {reason} (patterns "
                f"run on RE2, in time linear in the name: no backreferences or lookaround)")
    return None


def problem(pattern: Any, apply_to: Any, priority: Any, definition: Any,
            operator: bool = False) -> str | None:
    """RabbitMQ's validation of a whole policy: None if it passes."""
    if not (isinstance(priority, int | float) and not isinstance(priority, bool)):
        return f"priority should be a number, actually was {erlang_term(priority)}"
    p = pattern_problem(pattern)
    if p is not None:
        return p
    if apply_to not in APPLY_TO:
        return (f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' "
                f"or 'all'")
    return definition_problem(definition, operator)


# --- matching --------------------------------------------------------------------------


def _options() -> Any:
    o = re2.Options()
    o.log_errors = False
    return o


_compiled: dict[str, Any] = {}


def _search(pattern: str, name: str) -> bool:
    rx = _compiled.get(pattern, False)
    if rx is False:
        try:
            rx = re2.compile(pattern, _options())
        except (re2.error, UnicodeEncodeError, TypeError):
            rx = None
        if len(_compiled) >= 4096:
            _compiled.clear()
        _compiled[pattern] = rx
    if rx is None:
        return False
    try:
        return rx.search(name) is not None
    except UnicodeEncodeError:  # RE2 reads UTF-8: a name that is not cannot match
        return False


def match(policies: dict[str, Policy], kind: str, name: str) -> Policy | None:
    """The policy that applies to the queue (``kind`` "queues") or exchange ("exchanges")
    ``name``: the highest priority of those matching, the first name among equals."""
    best: Policy | None = None
    for p in policies.values():
        if p.apply_to != "all" and p.apply_to != kind:
            continue
        if best is not None and (p.priority < best.priority or (
                p.priority == best.priority and p.name > best.name)):
            continue
        if _search(p.pattern, name):
            best = p
    return best


def effective_definition(vh: VHost, policy: str | None,
                         operator_policy: str | None) -> dict[str, Any]:
    """The definition in force: the policy's, the operator policy's keys merged in (the
    lower value wins where both have one)."""
    p = vh.policies.get(policy) if policy is not None else None
    op = vh.operator_policies.get(operator_policy) if operator_policy is not None else None
    d = dict(p.definition) if p is not None else {}
    if op is not None:
        for k, v in op.definition.items():
            d[k] = min(d[k], v) if k in d else v
    return d


def effective_arguments(vh: VHost, q: Queue) -> dict[str, Any]:
    """``q``'s arguments with its policy's and operator policy's values resolved in."""
    if q.policy is None and q.operator_policy is None:
        return q.arguments
    return queue_arguments(q, effective_definition(vh, q.policy, q.operator_policy))


def queue_arguments(q: Queue, definition: dict[str, Any]) -> dict[str, Any]:
    """The queue's arguments with the definition's values resolved in."""
    if not definition:
        return q.arguments
    args = dict(q.arguments)
    for key, (arg, lower) in QUEUE_KEYS.items():
        if key not in definition:
            continue
        v = definition[key]
        if arg not in args:
            args[arg] = v
        elif lower:
            cur = args[arg]
            if isinstance(cur, int) and not isinstance(cur, bool) and v < cur:
                args[arg] = v
    return args


# --- applying ----------------------------------------------------------------------------


def apply_queue(state: State, vh: VHost, q: Queue) -> None:
    """Recompute ``q``'s policy and its features from its arguments and that policy."""
    p = match(vh.policies, "queues", q.name)
    op = match(vh.operator_policies, "queues", q.name)
    q.policy = p.name if p is not None else None
    q.operator_policy = op.name if op is not None else None
    args = queue_arguments(q, effective_definition(vh, q.policy, q.operator_policy))
    had_expires, had_bytes_limit = q.expires, q.max_length_bytes
    held = messages.holds(q)
    q.dlx = q.dlrk = None
    q.overflow = "drop-head"
    configure(q, args)
    if messages.holds(q) != held:
        _rehold(state, q, not held)
    if q.max_length_bytes is not None and had_bytes_limit is None:
        # ready_bytes is kept only while there is a limit: count what is there now (the
        # messages of a queue that was plain count 0: their sizes were not kept)
        q.ready_bytes = sum(m.size for m in q.ready if isinstance(m, Msg)) + sum(
            m.size for _key, m in q.returned)
    if q.expires is not None and q.expires != had_expires:
        touch(state, q)  # a new expiry counts from now, as RabbitMQ's new timer does
    if q.slow:
        enforce_max_length(state, q)  # a lower limit drops the excess at once
        expire_head(state, q)
        schedule(state, q)


def _rehold(state: State, q: Queue, holds: bool) -> None:
    """``q`` starts (``holds``) or stops keeping the headers of its messages (a policy gave
    it, or took away, a dead-letter exchange or a delivery limit): count it as a holder of
    every message it has (ready or unacked) whose header another queue keeps, or no more.
    A message whose header nobody kept (it came before) stays without one: dropped, not
    dead-lettered, if it dies here (messages.header)."""
    ids = [entry_id(m) for m in q.ready] + [m.id for _key, m in q.returned]
    if q.unacked:
        ids.extend(entry_id(m) for ch in state.channels.values()
                   for uq, m, _c in ch.unacked.values() if uq is q)
    headers = state.headers
    for i in ids:
        h = headers.get(i)
        if h is None:
            continue
        if holds:
            h[4] += 1
        elif h[4] == 1:
            del headers[i]
        else:
            h[4] -= 1


def apply_exchange(vh: VHost, ex: Exchange) -> None:
    p = match(vh.policies, "exchanges", ex.name)
    ex.policy = p.name if p is not None else None
    ae = p.definition.get("alternate-exchange") if p is not None else None
    ex.policy_ae = ae if isinstance(ae, str) else None


def declared(state: State, vh: VHost, q: Queue | None = None,
             ex: Exchange | None = None) -> None:
    """A queue or exchange was created: the vhost's policies apply to it."""
    if not (vh.policies or vh.operator_policies):
        return
    if q is not None:
        apply_queue(state, vh, q)
    if ex is not None:
        apply_exchange(vh, ex)


def _applies(p: Policy, kind: str, name: str) -> bool:
    return (p.apply_to == "all" or p.apply_to == kind) and _search(p.pattern, name)


def _reapply(state: State, vh: VHost, name: str, operator: bool,
             changed: Policy | None) -> None:
    """The policy ``name`` changed (``changed``: as it is now; None: cleared): recompute the
    queues and exchanges it applied to or may apply to now. No other's can change, so a
    change costs one search of its pattern per name, not one per policy."""
    for q in list(vh.queues.values()):
        if q.deleted:
            continue
        if (q.operator_policy if operator else q.policy) == name or (
                changed is not None and _applies(changed, "queues", q.name)):
            apply_queue(state, vh, q)
    if operator:
        return  # (operator policies have no exchange keys)
    for ex in vh.exchanges.values():
        if ex.policy == name or (changed is not None and _applies(changed, "exchanges",
                                                                  ex.name)):
            apply_exchange(vh, ex)


def set_policy(state: State, cmd: C.SetPolicy, out: list[Effect]) -> None:
    vh = state.vhosts.get(cmd.vhost)
    if vh is None or not isinstance(cmd.name, str) or problem(
            cmd.pattern, cmd.apply_to, cmd.priority, cmd.definition, cmd.operator) is not None:
        return  # the edge refuses these: a bug there or another release's proposer
    table = vh.operator_policies if cmd.operator else vh.policies
    p = table[cmd.name] = Policy(cmd.name, cmd.pattern, cmd.apply_to, cmd.priority,
                                 dict(cmd.definition))
    _reapply(state, vh, cmd.name, cmd.operator, p)


def clear_policy(state: State, cmd: C.ClearPolicy, out: list[Effect]) -> None:
    vh = state.vhosts.get(cmd.vhost)
    if vh is None:
        return
    table = vh.operator_policies if cmd.operator else vh.policies
    if table.pop(cmd.name, None) is not None:
        _reapply(state, vh, cmd.name, cmd.operator, None)
