"""The commit a result names: HEAD where the files are HEAD's, else the files' own tree id, which names the commit
even in a copy whose .git is stale (a GPU node's)."""
import subprocess

import pytest

from experiments import provenance


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("FP8TRAIN_COMMIT", raising=False)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / ".gitignore").write_text("/runs/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    return tmp_path


def test_a_clean_tree_names_head(repo):
    assert provenance.git_commit(repo) == git(repo, "rev-parse", "--short", "HEAD")
    assert provenance.worktree_tree(repo) == git(repo, "rev-parse", "HEAD^{tree}")


def test_a_stale_copy_names_the_tree_of_the_commit_its_files_are(repo):
    stale = git(repo, "rev-parse", "--short", "HEAD")
    # The next commit changes a file and adds one; a copy of its files under the old .git sees both as changes.
    (repo / "a.py").write_text("x = 2\n")
    (repo / "b.py").write_text("y = 3\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "log.txt").write_text("ignored\n")
    named = provenance.git_commit(repo)
    assert named.startswith(f"{stale}+dirty tree ")
    assert git(repo, "diff", "--cached", "--name-only") == ""  # the scratch index left the repository's own alone
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "two")
    assert git(repo, "rev-parse", "HEAD^{tree}").startswith(named.split()[-1])
    assert named.split()[-1] != git(repo, "rev-parse", "HEAD~1^{tree}")[:12]


def test_the_environment_names_the_commit_first(repo, monkeypatch):
    monkeypatch.setenv("FP8TRAIN_COMMIT", "abc1234")
    assert provenance.git_commit(repo) == "abc1234"


def test_no_git_repository_reads_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv("FP8TRAIN_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert provenance.git_commit(tmp_path) == "unknown"
