"""The digest an approved answer keeps of the obligations it was computed under: what the answer holds
(consent rule, columns, thresholds) tells digests apart; a publication moratorium, which lapses on its day
and says only what the researcher may do with the answer, does not."""

from __future__ import annotations

import datetime as dt

from obligation_helpers import ONE_CODE_CONSENT, obligations

from gateway.pipeline import obligations_digest


def test_what_the_answer_holds_tells_digests_apart() -> None:
    base = obligations(("bmi", "sex"), ONE_CODE_CONSENT)
    assert obligations_digest(base) == obligations_digest(obligations(("bmi", "sex"), ONE_CODE_CONSENT))
    assert obligations_digest(base) != obligations_digest(obligations(("bmi", "sex"), ONE_CODE_CONSENT, 11))
    assert obligations_digest(base) != obligations_digest(obligations(("bmi",), ONE_CODE_CONSENT))
    wider = ONE_CODE_CONSENT.model_copy(update={"allowed_codes": ("DUO:0000006", "DUO:0000045")})
    assert obligations_digest(base) != obligations_digest(obligations(("bmi", "sex"), wider))


def test_a_moratorium_lapsing_does_not_change_the_digest() -> None:
    base = obligations(("bmi", "sex"), ONE_CODE_CONSENT)
    under = base.model_copy(update={"publication_moratorium_until": dt.date(2027, 1, 6)})
    assert obligations_digest(under) == obligations_digest(base)
