"""``prescreen users``: the people who may sign in to the web worklist (/ui)."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from service.console import EXIT_OK, settings_for, stdout
from service.errors import PrescreenError
from service.roles import ROLES


def register_users(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], _common: argparse.ArgumentParser
) -> None:
    """``users`` takes none of the common options: it touches no rule set."""
    people = sub.add_parser("users", help="people who may sign in to the web worklist (/ui)")
    people_sub = people.add_subparsers(dest="users_command", required=True)
    add = people_sub.add_parser(
        "add", help="add or replace a person (password from a prompt, or one line of stdin)"
    )
    add.add_argument("name", help="user name")
    add.add_argument(
        "--role", required=True, action="append", choices=ROLES, help="role (repeatable)"
    )
    add.add_argument("--trials", help="comma-separated trials a coordinator decides on (all)")
    add.add_argument(
        "--no-password", action="store_true", help="no password: signs in at the identity provider"
    )
    _identity_options(add, required=False)
    add.set_defaults(func=cmd_users)
    link = people_sub.add_parser(
        "link", help="link a person to the identity-provider account that signs in as them"
    )
    link.add_argument("name")
    _identity_options(link, required=True)
    link.set_defaults(func=cmd_users)
    remove = people_sub.add_parser("remove", help="remove a person and end their sessions")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_users)
    people_sub.add_parser("list", help="list the people").set_defaults(func=cmd_users)


def _identity_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--oidc-issuer",
        required=required,
        metavar="ISS",
        help="the identity provider's issuer URL (the iss of its ID tokens)",
    )
    parser.add_argument(
        "--oidc-subject",
        required=required,
        metavar="SUB",
        help="the person's account at it (the sub of their ID tokens)",
    )


def cmd_users(args: argparse.Namespace) -> int:
    """People who may sign in to the web worklist (/ui)."""
    from service.ui import users

    settings = settings_for(args)
    if args.users_command == "add":
        if (args.oidc_issuer is None) != (args.oidc_subject is None):
            raise PrescreenError("give --oidc-issuer and --oidc-subject together")
        identity = (args.oidc_issuer, args.oidc_subject) if args.oidc_issuer else None
        # A person linked to an identity-provider account signs in there: no password.
        no_password = args.no_password or identity is not None
        password = None if no_password else users.read_password()
        trials = [t.strip() for t in (args.trials or "").split(",") if t.strip()]
        users.add_user(settings, args.name, args.role, trials, password, identity)
        scope = f" for {', '.join(trials)}" if trials else ""
        linked = " (linked to the identity-provider account)" if identity else ""
        stdout.print(f"Saved {args.name}: {', '.join(args.role)}{scope}{linked}")
    elif args.users_command == "link":
        users.link_user(settings, args.name, args.oidc_issuer, args.oidc_subject)
        stdout.print(f"Linked {args.name} to {args.oidc_subject} at {args.oidc_issuer}")
    elif args.users_command == "remove":
        if not users.remove_user(settings, args.name):
            raise PrescreenError(f"no user named '{args.name}'")
        stdout.print(f"Removed {args.name}")
    else:
        table = Table("name", "role", "trials", "sign-in")
        for user in users.list_users(settings):
            if user.password_hash:
                sign_in = "password"
            elif user.oidc_subject:
                sign_in = f"identity provider: {user.oidc_subject} at {user.oidc_issuer}"
            else:
                sign_in = "identity provider, not linked (prescreen users link)"
            table.add_row(escape(user.name), user.role, user.trials or "all", escape(sign_in))
        stdout.print(table)
    return EXIT_OK
