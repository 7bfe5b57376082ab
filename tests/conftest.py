import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# syzkaller's report corpus (tests/test_faults_corpus.py): not shipped, placed beside the checkout.
SYZ_CORPUS = Path(
    os.environ.get("CMA_SYZ_CORPUS")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "syzkaller-report-corpus"
)


@pytest.fixture
def fixture_text():
    def read(name: str) -> str:
        return (FIXTURES / name).read_text(errors="replace").replace("\r", "")

    return read


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the `corpus` tests when the corpus is absent, unless CMA_REQUIRE_SYZ_CORPUS=1 (then they fail)."""
    if SYZ_CORPUS.is_dir() or os.environ.get("CMA_REQUIRE_SYZ_CORPUS") == "1":
        return
    absent = [item for item in items if item.get_closest_marker("corpus")]
    if absent:
        items[:] = [item for item in items if not item.get_closest_marker("corpus")]
        config.hook.pytest_deselected(items=absent)
