"""Language pairs: the table of target languages and its check. The prompt itself is the family's
(:func:`iwslt_mc.families.prompt_text`, :meth:`iwslt_mc.families.base.Family.messages`)."""

from __future__ import annotations

from .floor.languages import TARGET_LANGUAGE, check_lang


