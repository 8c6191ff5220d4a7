

def test_dataset_versions_honour_easel_git_sha(tmp_path, monkeypatch):
    """In a pod there is no checkout: the image's EASEL_GIT_SHA names the code, as in run tags."""
    from model_code import tracking
    from model_code.data import version
    monkeypatch.setenv("EASEL_GIT_SHA", "abc123")
    assert version.git_head(str(tmp_path)) == tracking.git_revision(str(tmp_path)) == "abc123"
    monkeypatch.delenv("EASEL_GIT_SHA")
    assert tracking.git_head(str(tmp_path)) is None and tracking.git_dirty(str(tmp_path)) is None
