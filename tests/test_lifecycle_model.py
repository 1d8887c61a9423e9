"""Lifecycle model: typed variables, xpaths, declaration checks and paths between states.

The quick-start lifecycles below (WebServer, WebSite, Proxy) are declarations only: their
bodies do nothing; the real modules doing real work come with the loader.
"""

from __future__ import annotations

import copy
import ipaddress
import pickle
import re
import string
from collections import deque
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from symphonyd.errors import Conflict, Invalid, NotFound
from symphonyd.lifecycle.model import (
    Catalog,
    Lifecycle,
    Provide,
    Require,
    RequireExternal,
    RequireLocal,
    State,
    XPath,
    provide,
)
from symphonyd.lifecycle.paths import (
    call_steps,
    find_cycle,
    goto_steps,
    moves,
    stack_after,
)
from symphonyd.lifecycle.variables import (
    Bool,
    Float,
    Host,
    Int,
    List,
    Node,
    Password,
    Port,
    Secret,
    Str,
    Url,
    Variable,
    dump_values,
    parse_assignments,
    validate_values,
)

# -- the quick-start lifecycles, as data -------------------------------------------------


class WebServer(Lifecycle):
    """Serves HTTP from a document root."""

    class NotInstalled(State):
        pass

    class Installed(State):
        pass

    class Configured(State):
        @provide(requires=[Require([Port("port", default=80)])])
        def enter(self, port: int) -> None: ...

        @provide(
            requires=[Require([Str("path", default="/var/www/")])],
            returns=[Str("path")],
            flags={"reload": True},
        )
        def create_document_root(self, path: str) -> dict[str, str]:
            return {"path": path}

    class Active(State):
        reloaded: list[dict[str, object]] = []

        @provide(returns=[Url("url")])
        def start(self) -> dict[str, str]:
            return {"url": "http://localhost/"}

        def cross(self, **flags: object) -> None:
            self.reloaded.append(flags)

    states = [NotInstalled, Installed, Configured, Active]
    transitions = [(NotInstalled, Installed), (Installed, Configured), (Configured, Active)]
    initial_state = NotInstalled


class WebSite(Lifecycle):
    class NotInstalled(State):
        pass

    class Templated(State):
        @provide(
            requires=[
                RequireLocal(
                    "//WebServer/Configured/create_document_root",
                    provide_args=[Str("path", default="/var/www/website/")],
                )
            ]
        )
        def enter(self, path: str) -> None: ...

    class Active(State):
        @provide(
            requires=[RequireLocal("//WebServer//start", provide_ret=[Url("url")])],
            returns=[Url("url")],
        )
        def start(self, url: str) -> dict[str, str]:
            return {"url": url}

    states = [NotInstalled, Templated, Active]
    transitions = [("NotInstalled", "Templated"), ("Templated", "Active")]
    initial_state = "NotInstalled"


class Proxy(Lifecycle):
    class NotInstalled(State):
        pass

    class Active(State):
        @provide(
            requires=[
                RequireExternal(
                    "//WebSite//start", provide_ret=[Url("url")], nargs="*", name="websites"
                )
            ]
        )
        def enter(self, websites: list[dict[str, str]]) -> None: ...

        @provide(returns=[Url("url", from_xpath="WebSite//start")])
        def start(self) -> dict[str, str]:
            return {"url": "http://proxy/"}

    states = [NotInstalled, Active]
    transitions = [(NotInstalled, Active)]
    initial_state = NotInstalled


class Database(Lifecycle):
    """A branching lifecycle: a node is a master or a slave, and can switch sideways."""

    class NotInstalled(State):
        pass

    class Installed(State):
        pass

    class Master(State):
        @provide(requires=[Require([Password("root_password")])])
        def enter(self, root_password: Secret) -> None: ...

    class Slave(State):
        @provide(requires=[RequireExternal("Database/Master/enter", nargs=1)])
        def enter(self) -> None: ...

    class Tuned(State):
        pass

    states = [NotInstalled, Installed, Master, Slave, Tuned]
    transitions = [
        (NotInstalled, Installed),
        (Installed, Master),
        (Installed, Slave),
        (Master, Tuned),
        (Slave, Tuned),
    ]
    initial_state = NotInstalled


CATALOG = Catalog([WebServer, WebSite, Proxy, Database])

# -- variables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "given", "expected"),
    [
        (Str("s", pattern=r"[a-z]+"), "abc", "abc"),
        (Str("s"), "  spaced  ", "  spaced  "),
        (Int("i", min=-5, max=5), " -5 ", -5),
        (Int("i"), 12, 12),
        (Float("f", min=0.5), "1e3", 1000.0),
        (Float("f"), 2, 2.0),
        (Bool("b"), "Yes", True),
        (Bool("b"), "off", False),
        (Bool("b"), False, False),
        (Host("h"), "db-1.example.org", "db-1.example.org"),
        (Host("h"), "10.0.0.7", "10.0.0.7"),
        (Host("h"), "fe80::1", "fe80::1"),
        (Port("p"), "8080", 8080),
        (Port("p"), 65535, 65535),
        (Url("u"), "https://example.org:8443/x?y=1", "https://example.org:8443/x?y=1"),
        (Url("u"), "http://[::1]:8080/", "http://[::1]:8080/"),
        (Url("u", schemes=["ftp"]), "ftp://files/", "ftp://files/"),
        (Node("n"), "node-2", "node-2"),
        (List("l", Port("p")), "80, 443", [80, 443]),
        (List("l", Port("p")), '[80, "443"]', [80, 443]),
        (List("l", Port("p")), "", []),
        (List("l", Host("h")), ["a", "b.c"], ["a", "b.c"]),
    ],
)
def test_good_values_are_parsed_to_their_type(
    variable: Variable[Any], given: object, expected: object
) -> None:
    value = variable.parse(given)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("variable", "given", "reason"),
    [
        (Str("s", pattern=r"[a-z]+"), "abc1", "does not match the pattern"),
        (Str("s", max_length=3), "abcd", "at most 3 characters"),
        (Str("s"), 5, "must be a string, not a number"),
        (Str("s"), "a\x00b", "NUL"),
        (Int("i", max=5), "6", "at most 5, not 6"),
        (Int("i", min=1, max=5), 0, "between 1 and 5, not 0"),
        (Int("i"), "1_000", "whole number"),
        (Int("i"), "٣", "whole number"),
        (Int("i"), True, "not a boolean"),
        (Int("i"), 1.0, "not a number"),
        (Float("f"), "nan", "must be a number"),
        (Float("f"), "1e999", "finite"),
        (Float("f", max=1), 1.5, "at most 1"),
        (Bool("b"), "maybe", "true or false"),
        (Bool("b"), 1, "not a number"),
        (Host("h"), "bad_host", "not a host name"),
        (Host("h"), "-a.example", "not a host name"),
        (Host("h"), "999.1.1.1", "not a valid IP address"),
        (Host("h"), "", "must not be empty"),
        (Port("p"), "0", "between 1 and 65535, not 0"),
        (Port("p"), 65536, "between 1 and 65535, not 65536"),
        (Url("u"), "ftp://x/", "scheme http or https"),
        (Url("u"), "http:///path", "has no host"),
        (Url("u"), "http://a b/", "spaces"),
        (Url("u"), "http://x:99999/", "bad port"),
        (Url("u"), "http://[::1/", "is not a URL"),
        (Node("n"), "Node_1", "invalid node name"),
        (List("l", Port("p")), "80,0", "item 2: must be between 1 and 65535"),
        (List("l", Port("p"), max_items=1), [1, 2], "at most 1 items"),
        (List("l", Int("i")), "[1,", "not a JSON list"),
        (List("l", Int("i")), {"a": 1}, "must be a list, not an object"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    variable: Variable[Any], given: object, reason: str
) -> None:
    with pytest.raises(Invalid, match=reason) as caught:
        variable.parse(given)
    assert caught.value.message.startswith(f"invalid value for {variable.name!r}: ")
    assert reason in caught.value.details["fields"][variable.name]


def test_text_and_json_are_distinct_ways_in() -> None:
    assert Int("i").from_text("7") == 7
    with pytest.raises(Invalid, match="not a string"):
        Int("i").from_json("7")  # JSON is strict; parse() reads strings as text
    assert Bool("b").from_json(True) is True
    assert Str("s").from_json("7") == "7"


def test_node_values_are_checked_against_the_members_given() -> None:
    node = Node("node")
    assert node.parse("node-9") == "node-9"  # no members: only the syntax
    assert node.parse("node-2", members={"node-1", "node-2"}) == "node-2"
    with pytest.raises(
        Invalid, match=r"'node-9' is not a cluster member \(members: node-1, node-2\)"
    ):
        node.parse("node-9", members={"node-2", "node-1"})
    nodes = List("nodes", Node("node"))
    with pytest.raises(Invalid, match="item 2: 'c' is not a cluster member"):
        nodes.parse("a, c", members={"a", "b"})


def test_validation_hooks_by_subclass_and_by_callable() -> None:
    class EvenPort(Port):
        def validate(self, value: int) -> None:
            super().validate(value)
            if value % 2:
                raise ValueError("must be even")

    assert EvenPort("p").parse("8080") == 8080
    with pytest.raises(Invalid, match="'p': must be even"):
        EvenPort("p").parse("8081")
    with pytest.raises(Invalid, match="rejected by its validation hook"):
        Str("s", validator=lambda value: value != "root").parse("root")

    def no_tmp(value: str) -> None:
        if value.startswith("/tmp"):
            raise Invalid("must not be under /tmp")

    with pytest.raises(Invalid, match=r"invalid value for 'path': must not be under /tmp$"):
        Str("path", validator=no_tmp).parse("/tmp/x")
    assert EvenPort("p", validator=lambda value: value > 1024).parse(2048) == 2048
    with pytest.raises(Invalid, match="validation hook"):
        EvenPort("p", validator=lambda value: value > 1024).parse(80)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: Port("port", default=0), "bad default for variable 'port': must be between"),
        (lambda: Int("n", min=5, max=1), "min 5 is above max 1"),
        (lambda: Port("p", max=70000), "within 1-65535"),
        (lambda: Str("s", pattern="("), "bad pattern"),
        (lambda: Str("class"), "invalid variable name 'class'"),
        (lambda: Str("1st"), "invalid variable name"),
        (lambda: List("l", Int), "`of` must be a variable"),  # type: ignore[arg-type]
        (lambda: Url("u", schemes=[]), "at least one URL scheme"),
        (lambda: Str("s", from_xpath=""), "from_xpath"),
    ],
)
def test_bad_variable_declarations_are_refused(make: Any, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        make()


def test_secrets_never_show_in_repr_str_messages_or_json() -> None:
    secret_text = "correct-horse-battery"
    password = Password("pw", default=secret_text, help="the root password")
    value = password.parse(secret_text)
    assert isinstance(value, Secret) and value.reveal() == secret_text
    assert password.is_secret and not Str("s").is_secret
    shown = [repr(value), str(value), f"{value}", f"{value:>30}", repr(password), str(password)]
    shown += [repr(password.describe()), repr(dump_values([password], {"pw": value}))]
    shown += [repr([value]), repr({"pw": value})]
    assert all(secret_text not in text for text in shown), shown
    assert dump_values([password], {"pw": value}, reveal=True) == {"pw": secret_text}
    assert value == Secret(secret_text) and value != Secret("other-value")
    assert copy.deepcopy(value) == value
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(value)
    too_short = "abc"
    with pytest.raises(Invalid) as caught:
        password.parse(too_short)
    assert too_short not in str(caught.value) and "at least 8 characters" in str(caught.value)
    # a hook that quotes the value has its reason replaced, not shown
    nosy = Password(
        "pw", validator=lambda v: (_ for _ in ()).throw(ValueError(f"bad {v.reveal()}"))
    )
    with pytest.raises(Invalid) as caught:
        nosy.parse(secret_text)
    assert secret_text not in repr(caught.value.to_dict())
    assert "hook (the reason would show the secret)" in caught.value.message
    secrets = List("pws", Password("pw"))
    assert secrets.is_secret
    assert secrets.to_json(secrets.parse([secret_text])) == ["********"]


def test_all_invalid_fields_are_named_at_once() -> None:
    variables = [
        Port("port", default=80),
        Str("path"),
        Password("password"),
        Bool("debug", required=False),
        Int("workers", required=False, default=4),
        Host("host"),
    ]
    with pytest.raises(Invalid) as caught:
        validate_values(
            variables,
            {"port": "0", "password": "short", "host": "a b", "colour": "red"},
            what="values of WebServer/Configured/enter",
        )
    fields = caught.value.details["fields"]
    assert list(fields) == ["port", "path", "password", "host", "colour"]
    assert fields["path"] == "required, no value given"
    assert fields["colour"].startswith("unknown variable (known: debug, host, password")
    message = caught.value.message
    assert message.startswith("invalid values of WebServer/Configured/enter (5 problems): port: ")
    assert all(f"{name}: " in message for name in fields)
    assert "short" not in message.replace("password: must", "")
    good = validate_values(
        variables, {"path": "/srv", "password": "long-enough", "host": "h", "port": None}
    )
    assert good["port"] == 80 and good["workers"] == 4 and good["debug"] is None
    assert good["password"] == Secret("long-enough")
    assert validate_values([Str("a")], {"a": "x", "b": "y"}, allow_unknown=True) == {"a": "x"}


def test_assignments_are_split_on_the_first_equals_sign_without_echoing_values() -> None:
    assert parse_assignments(["port=8080", "url=http://x/?a=b", "empty="]) == {
        "port": "8080",
        "url": "http://x/?a=b",
        "empty": "",
    }
    with pytest.raises(Invalid, match=r"--set #2: expected VAR=VALUE") as caught:
        parse_assignments(["a=1", "hunter2hunter2"])
    assert "hunter2" not in caught.value.message
    with pytest.raises(Invalid, match="'a' is given twice"):
        parse_assignments(["a=1", "a=2"])
    with pytest.raises(Invalid, match="must not contain spaces"):
        parse_assignments(["a b=1"])


ALL_TYPES: list[Variable[Any]] = [
    Str("s", pattern=r"[a-z]{1,5}"),
    Int("i", min=-100, max=100),
    Float("f"),
    Bool("b"),
    Host("h"),
    Port("p"),
    Url("u"),
    Password("pw"),
    Node("n"),
    List("l", Port("p")),
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ALL_TYPES), st.text(max_size=40) | JSON_VALUES)
def test_any_input_gives_a_value_or_an_invalid_naming_the_variable(
    variable: Variable[Any], given: object
) -> None:
    try:
        variable.parse(given)
    except Invalid as exc:
        assert exc.message.startswith(f"invalid value for {variable.name!r}: ")
        assert list(exc.details["fields"]) == [variable.name]


@settings(max_examples=200, deadline=None)
@given(st.integers())
def test_ints_parse_from_text_and_json_and_respect_their_range(number: int) -> None:
    variable = Int("count", min=-1000, max=1000)
    if -1000 <= number <= 1000:
        assert variable.parse(str(number)) == number == variable.parse(number)
        assert variable.parse(f" +{number} " if number >= 0 else str(number)) == number
    else:
        with pytest.raises(Invalid, match=r"'count': must be between -1000 and 1000"):
            variable.parse(str(number) if abs(number) < 10**29 else number)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_round_trip_through_text(number: float) -> None:
    assert Float("ratio").parse(repr(number)) == number


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4
    ),
    st.ip_addresses(),
)
def test_host_names_and_addresses_are_hosts(labels: list[str], address: Any) -> None:
    name = ".".join(labels)
    assume(not labels[-1].isdigit())
    assert Host("host").parse(name) == name
    assert Host("host").parse(str(address)) == str(address)
    assert ipaddress.ip_address(Host("host").parse(str(address))) == address


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(str.isprintable))
def test_a_refused_secret_never_shows_in_the_error(secret_text: str) -> None:
    def refuse(value: Secret) -> None:
        raise ValueError(f"{value.reveal()} is on the list of leaked passwords")

    other = (
        "x" * len(secret_text) if secret_text != "x" * len(secret_text) else "y" * len(secret_text)
    )
    for variable in (Password("pw", min_chars=0, validator=refuse), Password("pw", min_chars=31)):
        errors = []
        for text in (secret_text, other):
            with pytest.raises(Invalid) as single:
                variable.parse(text)
            with pytest.raises(Invalid) as together:
                validate_values([variable], {"pw": text, "port": text})
            errors.append((single.value.to_dict(), together.value.to_dict()))
        # The errors do not depend on the secret at all, so they cannot contain it. (A
        # "secret not in the text" check here failed on "invalid ", a piece of the fixed
        # wording: the plain check is the example-based test below.)
        assert errors[0] == errors[1]


def test_a_refused_secret_is_not_in_the_error_text() -> None:
    secret = "correct-horse-battery"

    def refuse(value: Secret) -> None:
        raise ValueError(f"{value.reveal()} is on the list of leaked passwords")

    for variable in (Password("pw", min_chars=0, validator=refuse), Password("pw", min_chars=31)):
        with pytest.raises(Invalid) as single:
            variable.parse(secret)
        with pytest.raises(Invalid) as together:
            validate_values([variable], {"pw": secret})
        for error in (single.value, together.value):
            assert "pw" in error.message and secret not in repr(error.to_dict())


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(string.ascii_letters + "_.-/", min_size=1, max_size=10), st.text(max_size=20)
    )
)
def test_assignments_round_trip(values: dict[str, str]) -> None:
    assert parse_assignments(f"{key}={value}" for key, value in values.items()) == values


# -- xpaths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xpath", "expected"),
    [
        ("WebSite//start", ["WebSite/Active/start"]),
        ("//WebSite//start", ["WebSite/Active/start"]),
        ("/node-1/WebSite//start", ["WebSite/Active/start"]),
        ("WebServer/Active/start", ["WebServer/Active/start"]),
        ("//create_document_root", ["WebServer/Configured/create_document_root"]),
        ("WebServer/*/enter", [f"WebServer/{s}/enter" for s in WebServer.state_names()]),
        ("WebServer//Active//start", ["WebServer/Active/start"]),
        ("WebServer//Installed//start", []),
        ("Active/start", []),
        ("start", []),
    ],
)
def test_xpaths_select_provides(xpath: str, expected: list[str]) -> None:
    assert [ref.xpath for ref in CATALOG.find(xpath)] == expected


def test_an_xpath_may_name_a_node() -> None:
    assert XPath.parse("/node-1/WebSite//start").node == "node-1"
    assert XPath.parse("//WebSite//start").node is None
    assert XPath.parse("WebSite//start").steps == ((False, "WebSite"), (True, "start"))


@pytest.mark.parametrize(
    ("xpath", "reason"),
    [
        ("", "give e.g."),
        ("WebSite///start", "'///'"),
        ("WebSite/", "ends with '/'"),
        ("//", "'///' or a '/' at the end"),
        ("Web Site//start", "spaces"),
        ("/Node_1/WebSite//start", "invalid node name"),
        ("/node-1", "names a node but no provide"),
        ("A/B/c/d", "more than 3 names"),
        ("WebSite//st-art", "is not a name or '*'"),
    ],
)
def test_malformed_xpaths_are_refused(xpath: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        CATALOG.resolve(xpath)


def test_unknown_and_ambiguous_xpaths_say_what_exists() -> None:
    with pytest.raises(Invalid) as caught:
        CATALOG.resolve("//start")
    assert caught.value.details["matches"] == [
        "WebServer/Active/start",
        "WebSite/Active/start",
        "Proxy/Active/start",
    ]
    assert "ambiguous: it matches WebServer/Active/start, WebSite/Active/start" in str(caught.value)
    with pytest.raises(NotFound, match=r"'WebSite//stat'; WebSite has .*WebSite/Active/start"):
        CATALOG.resolve("WebSite//stat")
    with pytest.raises(NotFound, match=r"lifecycles: Database, Proxy, WebServer, WebSite"):
        CATALOG.resolve("Mysql//start")
    assert CATALOG.resolve("WebSite//start").provide is WebSite.Active.get_provide("start")


# -- declarations ------------------------------------------------------------------------


def test_the_quick_start_lifecycles_are_consistent() -> None:
    CATALOG.check()
    assert WebServer.state_names() == ["NotInstalled", "Installed", "Configured", "Active"]
    assert WebServer.initial() == "NotInstalled"
    assert WebServer.edges()["Configured"] == ("Active",)
    configured = WebServer.Configured.provides()
    assert list(configured) == ["enter", "create_document_root"]
    assert configured["enter"].arguments()["port"].default == 80
    assert WebServer.NotInstalled.get_provide("enter").requires == ()
    assert Proxy.Active.get_provide("enter").arguments() == {
        "websites": Proxy.Active.get_provide("enter").requires[0]
    }
    assert Proxy.Active.get_provide("enter").requires[0].nargs_range() == (0, None)
    described = WebServer.describe()
    assert described["transitions"][0] == ["NotInstalled", "Installed"]
    assert described["help"] == "Serves HTTP from a document root."
    assert '"Configured" -> "Active";' in WebServer.to_dot()
    with pytest.raises(NotFound, match=r"no state 'Running' \(states: NotInstalled, Installed"):
        WebServer.get_state("Running")
    with pytest.raises(NotFound, match="no provide 'stop'"):
        WebServer.Active.get_provide("stop")


def test_return_values_are_checked_against_the_declaration() -> None:
    start = WebServer.Active.get_provide("start")
    assert start.check_returns({"url": "http://h:80/"}) == {"url": "http://h:80/"}
    with pytest.raises(Invalid, match=r"return values of 'start' \(1 problem\): url: required"):
        start.check_returns(None)
    with pytest.raises(Invalid, match="returned list, not a dict"):
        start.check_returns(["http://h/"])


def _lifecycle(
    states: list[type[State]], transitions: list[tuple[Any, Any]], initial: Any
) -> type[Lifecycle]:
    namespace = {"states": states, "transitions": transitions, "initial_state": initial}
    return type("Broken", (Lifecycle,), namespace)


class A(State):
    pass


class B(State):
    pass


class C(State):
    pass


@pytest.mark.parametrize(
    ("states", "transitions", "initial", "reason"),
    [
        ([A, B], [(A, B), (B, "Z")], A, r"transition #2: unknown state 'Z' \(states: A, B\)"),
        ([A, B], [(A, B), (B, C)], A, "unknown state .*C"),
        ([A, B], [(A, B), (B, B)], A, "transition B -> B goes to itself"),
        ([A, B], [(A, B), (A, B)], A, "declared twice"),
        ([A, B, C], [(A, B), (C, B)], A, r"states \['C'\] cannot be reached"),
        ([A, B, C], [(A, B), (B, C), (C, B)], A, "cycle B -> C -> B"),
        ([A, B], [(A, B), (B, A)], A, "cycle A -> B -> A"),
        ([A, B], [(A, B)], None, "no initial_state"),
        ([A, B], [(A, B)], "Q", "initial_state: unknown state 'Q'"),
        ([], [], A, "declare at least one state"),
        ([A, A], [], A, "two states named A"),
        ([A, str], [], A, "is not a State subclass"),
        ([A, B], [(A,)], A, "transition #1 is not a pair"),
    ],
)
def test_bad_graphs_are_refused_with_the_reason(
    states: list[type[State]], transitions: list[Any], initial: Any, reason: str
) -> None:
    with pytest.raises(Invalid, match=reason) as caught:
        _lifecycle(states, transitions, initial)
    assert caught.value.message.startswith("lifecycle Broken is invalid: ")


def test_every_problem_of_a_graph_is_reported_together() -> None:
    with pytest.raises(Invalid) as caught:
        _lifecycle([A, B, C], [(A, B), (B, B), ("B", "Z")], A)
    assert len(caught.value.details["problems"]) == 3


def test_a_state_class_left_out_of_states_is_reported() -> None:
    with pytest.raises(Invalid, match="state class Forgotten is defined here but not listed"):

        class Service(Lifecycle):
            class Forgotten(State):
                pass

            states = [A]
            initial_state = A


def _state(**namespace: Any) -> type[State]:
    return type("Bad", (State,), namespace)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: _state(enter=provide(requires=[Require([Port("port")])])(lambda self: None)),
            r"is given \['port'\] by its requires but does not take them",
        ),
        (
            lambda: _state(enter=lambda self, port: None),
            r"takes \['port'\] but no require gives them",
        ),
        (
            lambda: _state(go=provide(requires=["port"])(lambda self: None)),
            "requires #1 is str: use Require, RequireLocal or RequireExternal",
        ),
        (
            lambda: _state(
                go=provide(requires=[RequireExternal("//X//y", nargs=0)])(lambda self: None)
            ),
            "nargs must be a count 1-1000, '[?]' or '[*]', not 0",
        ),
        (
            lambda: _state(
                go=provide(requires=[RequireExternal("//X//y", nargs="+")])(lambda self: None)
            ),
            "nargs must be",
        ),
        (
            lambda: _state(go=provide(requires=[RequireLocal("X///y")])(lambda self: None)),
            "bad xpath 'X///y'",
        ),
        (
            lambda: _state(go=provide(requires=[RequireLocal("/node-1/X//y")])(lambda s: None)),
            "a local require cannot name a node",
        ),
        (
            lambda: _state(
                go=provide(requires=[Require([Str("a")]), Require([Int("a")], name="more")])(
                    lambda self, a: None
                )
            ),
            "argument 'a' is given by both require 'values' and require 'more'",
        ),
        (
            lambda: _state(
                go=provide(requires=[Require([Str("a")]), Require([Int("b")])])(
                    lambda self, a, b: None
                )
            ),
            "two requires named 'values'",
        ),
        (
            lambda: _state(go=provide(requires=[Require([Str("a"), Int("a")])])(lambda s, a: 0)),
            "two variables named 'a'",
        ),
        (
            lambda: _state(
                go=provide(requires=[RequireLocal("X//y", [Str("a")], [Str("a")])])(lambda s, a: 0)
            ),
            "in both provide_args and provide_ret",
        ),
        (
            lambda: _state(go=provide(returns=[Str("a", from_xpath="X///y")])(lambda s: 0)),
            "from_xpath: bad xpath",
        ),
        (lambda: _state(go=provide(flags={"re load": 1})(lambda s: 0)), "not an identifier"),
        (lambda: _state(leave=provide(lambda s: 0)), "not one of context, cross, ensure"),
        (lambda: _state(provides=provide(lambda s: 0)), "not one of context, cross, ensure"),
        (lambda: _state(Go=provide(lambda s: 0)), "a provide name is lowercase"),
        (lambda: _state(leave=lambda s, force: 0), r"leave takes \['force'\]"),
        (lambda: _state(cross=lambda s, *flags: 0), "cross must take only keyword"),
        (lambda: _state(enter=3), "enter must be a method"),
    ],
)
def test_malformed_provides_are_refused_when_the_state_is_made(make: Any, reason: str) -> None:
    with pytest.raises(Invalid, match=reason) as caught:
        make()
    assert caught.value.message.startswith("state Bad is invalid: ")


def test_a_provide_taking_anything_accepts_its_requires() -> None:
    state = _state(go=provide(requires=[Require([Str("a")])])(lambda self, **kw: None))
    assert list(state.provides()) == ["enter", "go"]


def test_the_initial_state_cannot_require_anything_on_enter() -> None:
    first = _state(enter=provide(requires=[Require([Str("a")])])(lambda self, a: None))
    with pytest.raises(Invalid, match="applied from the start: its enter cannot require"):
        _lifecycle([first, A], [(first, A)], first)


def test_cross_must_take_the_flags_of_the_lifecycle() -> None:
    flagged = _state(go=provide(flags={"reload": True})(lambda s: None))
    deaf = type("Deaf", (State,), {"cross": lambda self, restart=False: None})
    with pytest.raises(Invalid, match=r"state Deaf: cross does not take the flags \['reload'\]"):
        _lifecycle([flagged, deaf], [(flagged, deaf)], flagged)


def _catalog_problems(*requires: Any, returns: Any = ()) -> list[str]:
    class Client(Lifecycle):
        class Off(State):
            pass

        class On(State):
            @provide(requires=list(requires), returns=list(returns))
            def enter(self, **arguments: Any) -> None: ...

        states = [Off, On]
        transitions = [(Off, On)]
        initial_state = Off

    problems = Catalog([WebServer, WebSite, Proxy, Client]).problems()
    return problems.get("Client", [])


@pytest.mark.parametrize(
    ("requires", "returns", "reason"),
    [
        ([RequireLocal("Nginx//start")], [], "require 'start': no provide matches 'Nginx//start'"),
        ([RequireLocal("//start")], [], "is ambiguous: it matches WebServer/Active/start"),
        (
            [RequireLocal("WebServer//create_document_root", [Str("dir")])],
            [],
            "provide_args: WebServer/Configured/create_document_root has no 'dir' "
            r"\(it has: path\)",
        ),
        (
            [RequireLocal("WebServer//start", provide_ret=[Str("url")])],
            [],
            "'url' is str here but url in WebServer/Active/start",
        ),
        (
            [RequireExternal("WebSite//start", provide_ret=[Url("address")])],
            [],
            "has no 'address'",
        ),
        ([], [Url("url", from_xpath="WebServer//enter")], "is ambiguous"),
        (
            [],
            [Port("port", from_xpath="WebServer/Active/start")],
            "takes or returns no variable 'port'",
        ),
        ([], [Str("port", from_xpath="WebServer/Configured/enter")], "has 'port' as port, not str"),
        ([RequireLocal("Client/Off/enter")], [], "cannot require its own lifecycle locally"),
    ],
)
def test_references_between_lifecycles_are_checked(
    requires: list[Any], returns: list[Any], reason: str
) -> None:
    problems = _catalog_problems(*requires, returns=returns)
    assert len(problems) == 1, problems
    assert problems[0].startswith("Client/On/enter: ")
    assert re.search(reason, problems[0]), problems[0]


def test_a_cycle_of_requires_is_refused() -> None:
    class Ping(Lifecycle):
        class Off(State):
            pass

        class On(State):
            @provide(requires=[RequireExternal("Pong/On/enter")])
            def enter(self) -> None: ...

        states = [Off, On]
        transitions = [(Off, On)]
        initial_state = Off

    class Pong(Lifecycle):
        class Off(State):
            pass

        class On(State):
            @provide(requires=[RequireLocal("Ping/On/enter")])
            def enter(self) -> None: ...

        states = [Off, On]
        transitions = [(Off, On)]
        initial_state = Off

    with pytest.raises(Invalid, match=r"requires form a cycle: (Ping|Pong)/On/enter -> "):
        Catalog([Ping, Pong]).check()
    assert Catalog([Ping, WebServer]).problems() == {
        "Ping": [
            "Ping/On/enter: require 'enter': no provide matches 'Pong/On/enter'; "
            "lifecycles: Ping, WebServer"
        ]
    }


def test_the_catalog_refuses_duplicates_and_abstract_bases() -> None:
    with pytest.raises(Conflict, match="already loaded"):
        Catalog([WebServer, WebServer])

    class Base(Lifecycle, abstract=True):
        pass

    with pytest.raises(Invalid, match="abstract"):
        Catalog([Base])
    with pytest.raises(NotFound, match=r"no lifecycle 'Nope' \(lifecycles: Database, Proxy"):
        CATALOG.get("Nope")
    assert "WebSite" in CATALOG and len(CATALOG) == 4


# -- paths -------------------------------------------------------------------------------

INSTALLED = ["NotInstalled", "Installed"]


def test_a_linear_path_enters_each_state_with_its_requires() -> None:
    steps = goto_steps(WebServer, ["NotInstalled"], "Active")
    assert [(s.action, s.state) for s in steps] == [
        ("enter", "Installed"),
        ("enter", "Configured"),
        ("enter", "Active"),
    ]
    assert steps[1].provide is WebServer.Configured.get_provide("enter")
    assert [v.name for v in steps[1].requires[0].variables] == ["port"]  # type: ignore[union-attr]
    assert steps[1].xpath == "WebServer/Configured/enter"
    back = goto_steps(WebServer, ["NotInstalled", "Installed", "Configured", "Active"], "Installed")
    assert [(s.action, s.state, s.provide) for s in back] == [
        ("leave", "Active", None),
        ("leave", "Configured", None),
    ]
    assert goto_steps(WebServer, INSTALLED, "Installed") == []


def test_sideways_moves_leave_back_to_the_branch_then_enter() -> None:
    steps = goto_steps(Database, [*INSTALLED, "Master", "Tuned"], "Slave")
    assert [(s.action, s.state) for s in steps] == [
        ("leave", "Tuned"),
        ("leave", "Master"),
        ("enter", "Slave"),
    ]
    assert isinstance(steps[2].requires[0], RequireExternal)
    # Tuned is reachable from the current branch: no sideways move needed
    assert [s.state for s in goto_steps(Database, [*INSTALLED, "Slave"], "Tuned")] == ["Tuned"]


def test_the_shortest_way_is_taken_and_ties_leave_the_least() -> None:
    edges = {"i": ["a", "x"], "a": ["b"], "b": ["c"], "x": ["c"], "c": []}
    assert moves(edges, ["i"], "c") == [("enter", "x"), ("enter", "c")]
    # from i/a/b: entering c directly (1 step) beats going back through x (4 steps)
    assert moves(edges, ["i", "a", "b"], "c") == [("enter", "c")]
    # two ways of two steps: going on through m, or leaving a and entering t from i
    tie = {"i": ["a", "t"], "a": ["m"], "m": ["t"], "t": []}
    assert moves(tie, ["i", "a"], "t") == [("enter", "m"), ("enter", "t")]


def test_cycles_in_a_graph_are_never_followed_into_an_applied_state() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["b"]}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert moves(edges, ["a"], "d") == [("enter", "b"), ("enter", "c"), ("enter", "d")]
    assert moves(edges, ["a", "b", "c", "d"], "b") == [
        ("leave", "d"),
        ("leave", "c"),
    ]
    assert moves(edges, ["a", "b", "c"], "a") == [("leave", "c"), ("leave", "b")]
    assert find_cycle({"a": ["b"], "b": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_unreachable_and_unknown_targets_and_bad_stacks_are_refused() -> None:
    edges = {"a": ["b"], "b": [], "island": []}
    with pytest.raises(Conflict, match="state island cannot be reached from a -> b"):
        moves(edges, ["a", "b"], "island")
    with pytest.raises(NotFound, match="no state 'nowhere'"):
        moves(edges, ["a"], "nowhere")
    with pytest.raises(Invalid, match="no transition b -> a"):
        moves(edges, ["b", "a"], "a")
    with pytest.raises(Invalid, match="applied twice"):
        moves({"a": ["b"], "b": ["a"]}, ["a", "b", "a"], "a")
    with pytest.raises(Invalid, match="empty"):
        moves(edges, [], "a")
    with pytest.raises(Invalid, match="must start at its initial state NotInstalled"):
        goto_steps(WebServer, ["Installed"], "Active")
    with pytest.raises(NotFound, match="no state 'Running'"):
        goto_steps(WebServer, ["NotInstalled"], "Running")


def test_calling_a_provide_moves_only_if_its_state_is_not_applied() -> None:
    applied = ["NotInstalled", "Installed", "Configured", "Active"]
    steps = call_steps(WebServer, applied, "Configured", "create_document_root")
    assert [(s.action, s.state) for s in steps] == [("call", "Configured")]
    assert steps[0].cross == ("Active",)  # its flags reach the states above
    steps = call_steps(WebServer, INSTALLED, "Active", "start")
    assert [(s.action, s.state) for s in steps] == [
        ("enter", "Configured"),
        ("enter", "Active"),
        ("call", "Active"),
    ]
    assert steps[-1].cross == () and steps[-1].xpath == "WebServer/Active/start"
    assert [s.action for s in call_steps(WebServer, INSTALLED, "Configured", "enter")] == ["enter"]
    assert call_steps(WebServer, applied, "Configured", "enter") == []
    with pytest.raises(NotFound, match="no provide 'stop'"):
        call_steps(WebServer, applied, "Active", "stop")


def test_stack_after_replays_moves_and_refuses_impossible_ones() -> None:
    applied = [*INSTALLED, "Master"]
    assert stack_after(applied, goto_steps(Database, applied, "Slave")) == [*INSTALLED, "Slave"]
    with pytest.raises(Invalid, match="cannot leave Installed"):
        stack_after(applied, [("leave", "Installed")])
    with pytest.raises(Invalid, match="already applied"):
        stack_after(applied, [("enter", "Installed")])


def _fewest_moves(edges: dict[str, list[str]], applied: list[str], target: str) -> int | None:
    """Breadth-first over whole stacks: an independent oracle for `moves`."""
    start = tuple(applied)
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        stack, cost = queue.popleft()
        if stack[-1] == target:
            return cost
        nexts = [stack[:-1]] if len(stack) > 1 else []
        nexts += [(*stack, s) for s in edges[stack[-1]] if s not in stack]
        for following in nexts:
            if following not in seen:
                seen.add(following)
                queue.append((following, cost + 1))
    return None


@st.composite
def graphs_and_stacks(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[str], str]:
    names = [f"s{i}" for i in range(draw(st.integers(2, 7)))]
    edges = {
        name: draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) for name in names
    }
    applied = [names[0]]
    for _ in range(draw(st.integers(0, 5))):
        options = [s for s in edges[applied[-1]] if s not in applied]
        if not options:
            break
        applied.append(draw(st.sampled_from(options)))
    return edges, applied, draw(st.sampled_from(names))


@settings(max_examples=150, deadline=None)
@given(graphs_and_stacks())
def test_moves_are_valid_and_as_short_as_any_way(
    case: tuple[dict[str, list[str]], list[str], str],
) -> None:
    edges, applied, target = case
    fewest = _fewest_moves(edges, applied, target)
    if fewest is None:
        with pytest.raises(Conflict):
            moves(edges, applied, target)
        return
    planned = moves(edges, applied, target)
    assert len(planned) == fewest
    assert stack_after(applied, planned)[-1] == target
    actions = [action for action, _ in planned]
    assert actions == sorted(actions, key=lambda action: action != "leave")  # leaves first


def test_provide_objects_keep_the_method() -> None:
    item = WebServer.Configured.get_provide("create_document_root")
    assert isinstance(item, Provide) and item.flags == {"reload": True}
    assert item.func(WebServer.Configured(), path="/srv") == {"path": "/srv"}
    assert item.label == "create document root"
