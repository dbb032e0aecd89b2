"""``prescreen users``: the people who may sign in to the web worklist (/ui)."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from service.console import EXIT_OK, settings_for, stdout
from service.errors import PrescreenError


def register_users(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], _common: argparse.ArgumentParser
) -> None:
    """``users`` takes none of the common options: it touches no rule set."""
    people = sub.add_parser("users", help="people who may sign in to the web worklist (/ui)")
    people_sub = people.add_subparsers(dest="users_command", required=True)
    add = people_sub.add_parser(
        "add", help="add or replace a person (password from a prompt, or one line of stdin)"
    )
    add.add_argument("name", help="user name (with OIDC sign-in: the username claim)")
    add.add_argument("--role", required=True, choices=("coordinator", "viewer"), help="role")
    add.add_argument("--trials", help="comma-separated trials a coordinator decides on (all)")
    add.add_argument(
        "--no-password", action="store_true", help="no password: signs in at the identity provider"
    )
    add.set_defaults(func=cmd_users)
    remove = people_sub.add_parser("remove", help="remove a person and end their sessions")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_users)
    people_sub.add_parser("list", help="list the people").set_defaults(func=cmd_users)


def cmd_users(args: argparse.Namespace) -> int:
    """People who may sign in to the web worklist (/ui)."""
    from service.ui import users

    settings = settings_for(args)
    if args.users_command == "add":
        password = None if args.no_password else users.read_password()
        trials = [t.strip() for t in (args.trials or "").split(",") if t.strip()]
        users.add_user(settings, args.name, args.role, trials, password)
        scope = f" for {', '.join(trials)}" if trials else ""
        stdout.print(f"Saved {args.name}: {args.role}{scope}")
    elif args.users_command == "remove":
        if not users.remove_user(settings, args.name):
            raise PrescreenError(f"no user named '{args.name}'")
        stdout.print(f"Removed {args.name}")
    else:
        table = Table("name", "role", "trials", "sign-in")
        for user in users.list_users(settings):
            sign_in = "password" if user.password_hash else "identity provider"
            table.add_row(escape(user.name), user.role, user.trials or "all", sign_in)
        stdout.print(table)
    return EXIT_OK
