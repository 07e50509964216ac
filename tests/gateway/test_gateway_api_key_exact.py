"""The API key is a secret compared byte for byte: case, whitespace inside, or a prefix never pass."""

from support import free_port


async def test_an_api_key_differing_only_in_case_is_refused(make_stack):
    stack = await make_stack(API_KEY="S3cret-Key")
    body = {"host": "127.0.0.1", "port": free_port()}
    for token in ("s3cret-key", "S3CRET-KEY", "s3cret-Key", "S3cret-Ke"):
        refused = await stack.http.post("/engines", json=body, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403, token
    accepted = await stack.http.post("/engines", json=body, headers={"Authorization": "Bearer S3cret-Key"})
    assert accepted.status_code == 202
