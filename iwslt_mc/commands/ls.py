"""iwslt-mc ls: the shipped recipes, one line each."""

from ..cli import add_command


def add_parser(sub):
    p = add_command(sub, "ls", help="list the shipped recipes",
                    description="List the shipped recipes: name, model family and a one-line description each.",
                    examples="  iwslt-mc ls\n  iwslt-mc ls --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run(args) -> int:
    from ..output import print_json
    from ..recipes import list_recipes

    rows = list_recipes()
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    fwidth = max(len(r["family"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['family']:<{fwidth}}  {r['description']}")
    print("\ncopy one to edit: iwslt-mc cp RECIPE my-recipe.yaml; run: iwslt-mc build RECIPE --lang en-de ...")
    return 0
