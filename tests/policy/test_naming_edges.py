"""Engine command templates at their edges: the refusal lists the fields one may use.

Complements test_naming.py with the case it leaves open (found by `make mutate`).
"""

import pytest

from shared.policy.naming import render_command


def test_an_unknown_template_field_is_refused_with_the_known_fields_listed_in_order():
    with pytest.raises(ValueError) as refused:
        render_command("x --port {prot}", port=1, cache_dir="/c", name="acestream-1")
    message = str(refused.value)
    assert message.startswith("ENGINE_COMMAND 'x --port {prot}' uses unknown field ")
    assert message.endswith("; known fields: {port}, {cache_dir}, {name}")
