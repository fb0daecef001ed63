"""iwslt-mc cp: copy a shipped recipe to edit it."""

from ..cli import add_command


def add_parser(sub):
    p = add_command(sub, "cp", help="copy a shipped recipe to a file to edit",
                    description="Copy a shipped recipe to FILE (or into a directory) so it can be edited and built.",
                    examples="  iwslt-mc cp recipe-b my-recipe.yaml\n  iwslt-mc build my-recipe.yaml --lang en-de --base BASE --data ACL")
    p.add_argument("recipe", help="recipe name (see iwslt-mc ls)")
    p.add_argument("dest", help="destination file or directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    return p


def run(args) -> int:
    from ..recipes import copy_recipe

    dest = copy_recipe(args.recipe, args.dest, force=args.force)
    print(f"copied {args.recipe} to {dest}")
    return 0
