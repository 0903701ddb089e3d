"""The house rules, checked: `index` is pure (no service, web framework or torch), and the service
reaches it only through `index/__init__`'s exports."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import statement in `package`."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.name, node.module))
    return found


def test_index_imports_neither_the_service_nor_heavy_frameworks():
    banned = ("service", "fastapi", "starlette", "pydantic", "torch", "sentence_transformers")
    assert [(f, m) for f, m in imports("index") if m.split(".")[0] in banned] == []


def test_the_service_uses_only_the_index_interface():
    assert [(f, m) for f, m in imports("service") if m.startswith("index.")] == []


def test_importing_and_using_index_loads_no_torch():
    code = (
        "import sys, tempfile, numpy as np\n"
        "from index import Collection, HnswParams, Manifest, NewDocument, Query\n"
        "c = Collection.create(tempfile.mkdtemp(), Manifest(name='t', dim=4, metric='cosine', hnsw=HnswParams(),"
        " created_at='t'))\n"
        "c.upsert([NewDocument(id='a', vector=np.ones(4, np.float32))])\n"
        "assert c.search(Query(np.ones((1, 4), np.float32), 1)).matches[0][0].id == 'a'\n"
        "assert not {'torch', 'service', 'fastapi'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
