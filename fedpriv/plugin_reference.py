"""The generated plugin reference (``docs/plugins.md``): every protocol, defense, attack, model and data set.

Read from the registries (:data:`fedpriv.protocols.PROTOCOLS`, :data:`fedpriv.defenses.base.DEFENSES`
with their spec forms, :data:`fedpriv.attacks.ATTACKS`, :data:`fedpriv.models.MODELS`,
:data:`fedpriv.data.specs.DATASET_SPECS`) and from the plugins' own docstrings and declarations,
so the page cannot drift from the code: ``python -m fedpriv.plugin_reference docs/plugins.md``
writes it, and a test checks that the checked-in page equals the generated one.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from fedpriv.app_tables import toml_value
from fedpriv.attacks import ATTACKS, Attack
from fedpriv.attacks.base import Knowledge
from fedpriv.behaviours import BEHAVIOURS
from fedpriv.data import archives
from fedpriv.data.loading import EMBEDDED
from fedpriv.data.specs import DATASET_SPECS
from fedpriv.defenses.base import DEFENSE_FORMS, DEFENSES, Defense
from fedpriv.membership import MEMBERSHIP_ATTACKS
from fedpriv.models import MODELS
from fedpriv.options import declared
from fedpriv.protocols import PROTOCOLS

COMMAND = "python -m fedpriv.plugin_reference docs/plugins.md"


_NORM = re.compile(r"Norm(\dd)?$")  # BatchNorm2d, GroupNorm, ComplexBatchNorm; not NormGate
_ROLE = re.compile(r":\w+:`(~?)([^`]+)`")


def first_paragraph(text: str | None) -> str:
    """The first paragraph of a docstring as one line of Markdown (``""`` for none).

    reStructuredText's roles become code (``:class:`~a.B``` -> ```B```) and its double backticks single ones.
    """
    paragraph = inspect.cleandoc(text or "").split("\n\n")[0]
    line = " ".join(part.strip() for part in paragraph.splitlines())
    line = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", line)
    return line.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def defense_class(name: str) -> type[Defense]:
    """The class a defense factory builds, from its return annotation.

    Raises
    ------
    TypeError
        If the factory does not annotate its return type with a :class:`~fedpriv.defenses.base.Defense`
        subclass (the reference reads the defense's kind and docstring from it).
    """
    factory = DEFENSES.get(name)
    returned = typing.get_type_hints(factory).get("return")
    if not (isinstance(returned, type) and issubclass(returned, Defense)):
        raise TypeError(f"defense {name!r}: annotate its factory {factory.__qualname__} with the Defense subclass "
                        f"it returns (-> MyDefense), got {returned!r}")
    return returned


def _protocols() -> list[str]:
    lines = ["## Protocols", "",
             "A run's `protocol` says what a client sends, and so what the server observes (its leak). A defense",
             "applies under a protocol when its kind is one the protocol defends; an attack fits when it consumes",
             "the protocol's leak kind.", "",
             "| protocol | leak kind | defense kinds it applies | attacks that consume its leak |", "|---|---|---|---|"]
    for name in PROTOCOLS.names():
        protocol = PROTOCOLS.get(name)
        attacks = [a for a in ATTACKS.names() if protocol.leak_kind in ATTACKS.get(a).leak_kinds]
        lines.append(_row(f"`{name}`", f"`{protocol.leak_kind}`", ", ".join(f"`{k}`" for k in protocol.defends),
                          ", ".join(f"[`{a}`](#{a})" for a in attacks)))
    lines.append("")
    for name in PROTOCOLS.names():
        protocol = PROTOCOLS.get(name)
        lines += [f"### `{name}`", "", first_paragraph(type(protocol).__doc__),
                  "", f"Class `{type(protocol).__module__}.{type(protocol).__qualname__}`.", ""]
    return lines


def _defenses() -> list[str]:
    lines = ["## Defenses", "",
             "A client's defense is a spec string (`defense`, per client `defense-overrides`). Its kind is what it",
             "acts on; the protocols above list the kinds they apply.", "",
             "| defense | kind | protocols | what it does |", "|---|---|---|---|"]
    for name in DEFENSES.names():
        cls = defense_class(name)
        protocols = [p for p in PROTOCOLS.names() if cls.acts_on in PROTOCOLS.get(p).defends]
        lines.append(_row(f"[`{name}`](#defense-{name})", f"`{cls.acts_on}`", ", ".join(f"`{p}`" for p in protocols),
                          first_paragraph(cls.__doc__)))
    lines.append("")
    for name in DEFENSES.names():
        cls = defense_class(name)
        module = importlib.import_module(cls.__module__)
        lines += [f"### `{name}` {{#defense-{name}}}", "", first_paragraph(cls.__doc__), "",
                  f"- spec: `{DEFENSE_FORMS[name]}`", f"- kind: `{cls.acts_on}`",
                  f"- class `{cls.__module__}.{cls.__qualname__}`; its module: {first_paragraph(module.__doc__)}", ""]
    return lines


def _knowledge(attack: type[Attack]) -> str:
    knowledge = attack.knowledge
    return (f"model: `{knowledge.model}`, the client's defense spec: {_defense_knowledge(knowledge)}, "
            f"auxiliary data: `{knowledge.aux}`")


def _defense_knowledge(knowledge: Knowledge) -> str:
    if not knowledge.defense:
        return "no"
    return "yes (required)" if knowledge.defense_required else "yes (unless `attacker-knows-defense=false`)"


def _attacks() -> list[str]:
    lines = ["## Attacks", "",
             "Run by the server on the leaks of the attacked clients (`attacks`, `attack-clients`, `attack-rounds`).",
             "Each attack's options are run-config keys `attack.NAME.OPTION` (also in the",
             "[configuration reference](configuration.md#attack-options)).", "",
             "| attack | leak kinds | batch-norm modes | `attack-*` optimisation keys apply | options |",
             "|---|---|---|---|---|"]
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        lines.append(_row(f"[`{name}`](#{name})", ", ".join(f"`{k}`" for k in attack.leak_kinds),
                          ", ".join(attack.model_modes) or "-", "yes" if attack.optimises else "no",
                          str(len(declared(attack.Options)))))
    lines.append("")
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        module = importlib.import_module(attack.__module__)
        lines += [f"### `{name}`", "", first_paragraph(attack.__doc__), "",
                  f"- module `{attack.__module__}`: {first_paragraph(module.__doc__)}",
                  f"- knows: {_knowledge(attack)}", ""]
        lines += _option_table("attack", name, attack.Options) or ["No options of its own.", ""]
    return lines


def _option_table(family: str, name: str, options: type) -> list[str]:
    """The table of a plugin's ``FAMILY.NAME.OPTION`` keys (no lines when it has none)."""
    declarations = declared(options)
    if not declarations:
        return []
    return ["| option | type | default | valid | meaning |", "|---|---|---|---|---|"] + [
        _row(f"`{family}.{name}.{d.name}`", d.kind, f"`{toml_value(d.default)}`", d.spec.valid() or "any", d.spec.help)
        for d in declarations] + [""]


def _behaviours() -> list[str]:
    lines = ["## Server behaviours", "",
             "What the server does to the model it broadcasts (`server-behaviour`); each one's options are",
             "run-config keys `behaviour.NAME.OPTION`.", ""]
    for name in BEHAVIOURS.names():
        behaviour = BEHAVIOURS.get(name)
        protocols = ", ".join(behaviour.protocols) or "all"
        lines += _family_entry("behaviour", name, behaviour,
                               [f"- malicious: {'yes' if behaviour.malicious else 'no'}; protocols: {protocols}"])
    return lines


def _family_entry(family: str, name: str, plugin: Any, facts: list[str]) -> list[str]:
    """One plugin of a family with options ``FAMILY.NAME.OPTION``: heading, docstring, facts, module, options."""
    module = importlib.import_module(plugin.__module__)
    return ([f"### `{name}` {{#{family}-{name}}}", "", first_paragraph(plugin.__doc__), "", *facts,
             f"- module `{plugin.__module__}`: {first_paragraph(module.__doc__)}", ""]
            + _option_table(family, name, plugin.Options))


def _membership_attacks() -> list[str]:
    lines = ["## Membership attacks", "",
             "Run in the rounds `membership-rounds` names (`membership-attacks`), each on what its observer",
             "holds: the released global model, or (observer `server`) also the round's replies;",
             "each one's options are run-config keys `membership.NAME.OPTION`. Rows go to `membership.jsonl`.", ""]
    for name in MEMBERSHIP_ATTACKS.names():
        attack = MEMBERSHIP_ATTACKS.get(name)
        lines += _family_entry("membership", name, attack, [f"- observer: {attack.observer}"])
    return lines


def _models() -> list[str]:
    lines = ["## Models", "",
             "`model` is a registered name below, or `package.module:factory` (a function of `(num_classes,",
             "channels)` returning an `nn.Module`; see [your own model](tutorials/own-data.md)). Parameters are",
             "counted for 10 classes and 3 channels.", "",
             "| model | class | parameters | normalisation layers | description |", "|---|---|---|---|---|"]
    for name in MODELS.names():
        model = MODELS.get(name)(10, 3)
        norms = sorted({type(m).__name__ for m in model.modules() if _NORM.search(type(m).__name__)})
        lines.append(_row(f"`{name}`", f"`{type(model).__module__}.{type(model).__qualname__}`",
                          f"{sum(p.numel() for p in model.parameters()):,}", ", ".join(norms) or "none",
                          first_paragraph(type(model).__doc__)))
    lines.append("")
    return lines


def _source(name: str) -> str:
    if name in EMBEDDED:
        loader = EMBEDDED[name]
        return f"embedded, no download: {first_paragraph(importlib.import_module(loader.__module__).__doc__)}"
    if name in archives.CIFAR_ARCHIVES:
        return f"archive `{archives.CIFAR_ARCHIVES[name].archive}` in `data-dir`"
    if name in archives.IDX_ARCHIVES:
        return f"archives `{archives.IDX_ARCHIVES[name].folder}/raw/*-ubyte.gz` in `data-dir`"
    raise ValueError(f"data set {name!r} is neither embedded nor a known archive")


def _datasets() -> list[str]:
    lines = ["## Data sets", "",
             "`dataset` is a registered name below (images as the model sees them: channels x size x size), or a",
             "researcher's own: `folder:PATH` (ImageFolder layout) or `hf:PATH` (a Hugging Face `datasets`",
             "folder or parquet files), see [your own data](tutorials/own-data.md).", "",
             "| data set | classes | image | mean | std | where the images come from |", "|---|---|---|---|---|---|"]
    for name in DATASET_SPECS.names():
        spec = DATASET_SPECS.get(name)
        lines.append(_row(f"`{name}`", str(spec.num_classes), f"{spec.channels} x {spec.size} x {spec.size}",
                          ", ".join(f"{v:.4f}" for v in spec.mean), ", ".join(f"{v:.4f}" for v in spec.std),
                          _source(name)))
    lines.append("")
    return lines


def render() -> str:
    """The whole page."""
    lines = ["# Plugins", "",
             f"<!-- generated by {COMMAND}: do not edit by hand -->", "",
             "Every plugin the registries hold, with its docstring and (where the plugin reproduces a paper) the",
             "citation in it. New plugins: [Add a plugin](how-to/add-plugin.md).", ""]
    for part in (_protocols, _defenses, _attacks, _behaviours, _membership_attacks, _models, _datasets):
        lines += part()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    """Write the page to each file given."""
    for name in argv:
        Path(name).write_text(render())
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
