"""The reference tables of docs/ are generated from the registries: the committed files are what `python -m bench docs`
writes now (run it after changing a solver, spacing, metric, column or spec key)."""
import pytest

from bench import docs


@pytest.mark.parametrize("name", sorted(docs.PAGES))
def test_the_committed_table_is_current(name):
    committed = (docs.DOCS / name).read_text()
    assert committed == docs.PAGES[name](), f"docs/{name} is stale: run `make docs` (python -m bench docs)"


def test_every_spacing_and_column_is_documented():
    from bench.metrics import COLUMNS
    from bench.run.store import COLUMNS as ROW_COLUMNS
    from solvers.spacing import SPACING_NOTES, SPACINGS

    assert set(SPACING_NOTES) == set(SPACINGS)
    page = docs.columns_page()
    assert all(f"`{column}`" in page for column in [*ROW_COLUMNS, *COLUMNS])
