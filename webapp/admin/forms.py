"""The admin forms. Each turns what the browser sent into the plain value the API would
receive and hands it to the same ``webapp.validation`` function; no metadata rule is written here.

An error names the API's field (``metadata.KEY``); the form shows its message beside the
input that holds that key, or above the form when it names the whole map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Field,
    FieldList,
    Form,
    FormField,
    HiddenField,
    PasswordField,
    RadioField,
    StringField,
    TextAreaField,
)
from wtforms.validators import AnyOf, InputRequired

from .. import validation
from ..validation import MAX_METADATA_PAIRS, ValidationError


class MultiValueField(Field):
    """Every value sent under one name, as a list of strings (ticked checkboxes, repeated filters)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", list)
        super().__init__(*args, **kwargs)

    def process_formdata(self, valuelist: list[str]) -> None:
        self.data = list(valuelist)


def attach_error(form: Form, exc: ValidationError, holders: Mapping[str, Form] | None = None) -> None:
    """Show ``exc.message`` beside the input it concerns; the one way a form takes a validation error.

    A metadata pair at fault (``exc.key``) goes on its holder's ``key`` or ``value`` input
    (``exc.part``), where ``holders`` maps each metadata key to the (sub)form holding that
    pair; an error naming one of the form's fields (``exc.param``) goes on that field;
    anything else (the whole map, say) above the form.
    """
    holder = (holders or {}).get(exc.key) if exc.key is not None else None
    if holder is not None:
        field = holder[exc.part or "value"]
    elif exc.param is not None and exc.param in form._fields:
        field = form[exc.param]
    else:
        form.form_errors.append(exc.message)
        return
    field.errors = [*field.errors, exc.message]


def textarea_text(value: str | None) -> str:
    """Return a textarea's text with the browser's CRLF line breaks back to the LF the value was shown with."""
    return (value or "").replace("\r\n", "\n")


class LoginForm(FlaskForm):
    """Sign in with a username and a password."""

    username = StringField(
        "Username",
        validators=[InputRequired("Enter your username.")],
        render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false", "autofocus": True},
    )
    password = PasswordField(
        "Password", validators=[InputRequired("Enter your password.")], render_kw={"autocomplete": "current-password"}
    )


class MetadataRowForm(Form):
    """One key/value row of the metadata editor (a sub-form: the outer form carries the CSRF token)."""

    key = StringField("Key", render_kw={"autocomplete": "off", "spellcheck": "false", "placeholder": "key"})
    # A value may be up to 512 characters: a textarea that grows with its text (CSS field-sizing).
    value = TextAreaField("Value", render_kw={"autocomplete": "off", "placeholder": "value", "rows": 1})


class MetadataForm(FlaskForm):
    """A completion's whole metadata map as rows, and the version the rows were read at.

    Rows with neither key nor value are ignored, so a spare empty row costs nothing.
    ``metadata`` holds the cleaned map once ``validate()`` has passed.
    """

    version = HiddenField(validators=[InputRequired()])
    rows = FieldList(FormField(MetadataRowForm))

    metadata: dict[str, str] | None = None

    @classmethod
    def for_pairs(cls, pairs: list[tuple[str, str]], *, version: int | str, spare_row: bool = True) -> MetadataForm:
        """Return a form showing ``pairs`` (and an empty row to fill in, while there is room)."""
        rows = [{"key": key, "value": value} for key, value in pairs]
        if spare_row and len(rows) < MAX_METADATA_PAIRS:
            rows.append({"key": "", "value": ""})
        return cls(formdata=None, data={"version": str(version), "rows": rows})

    def pairs(self) -> list[tuple[str, str]]:
        """Return the rows as sent, in order, empty ones included."""
        return [(entry.form.key.data or "", textarea_text(entry.form.value.data)) for entry in self.rows]

    def with_row_added(self) -> MetadataForm:
        """Return the same form with one more empty row (none beyond the most a map may hold)."""
        pairs = self.pairs()
        if len(pairs) < MAX_METADATA_PAIRS:
            pairs.append(("", ""))
        return self.for_pairs(pairs, version=self.version.data or "", spare_row=False)

    def with_row_removed(self, index: int) -> MetadataForm:
        """Return the same form without row ``index``."""
        pairs = self.pairs()
        if 0 <= index < len(pairs):
            del pairs[index]
        return self.for_pairs(pairs, version=self.version.data or "", spare_row=not pairs)

    def validate(self, extra_validators: Any = None) -> bool:
        """Check the token and version, then the rows as the map the API would receive."""
        if not super().validate(extra_validators):
            return False
        metadata: dict[str, str] = {}
        holders: dict[str, Form] = {}
        for entry in self.rows:
            row = entry.form
            # "team " beside "team" is never meant as a second key: strip, then the duplicate check sees it.
            key, value = (row.key.data or "").strip(), textarea_text(row.value.data)
            row.key.data = key
            if not key and not value:
                continue
            if key in holders:
                # A JSON object cannot say this; two rows can, and one would silently win.
                attach_error(row, ValidationError(f"The key '{key}' is already used in another row: each key can appear once.", "key"))
                return False
            metadata[key] = value
            holders[key] = row
        try:
            self.metadata = validation.clean_metadata(metadata)
        except ValidationError as exc:
            attach_error(self, exc, holders)
            return False
        return True


class BulkForm(FlaskForm):
    """A bulk change: set or remove one metadata key, or delete, on the ticked completions or on
    every completion the filter the page was loaded with matches (carried in hidden fields).

    ``upto`` is set by the confirmation page: the change acts on the completions it counted.
    """

    action = RadioField(
        "Change",
        choices={"set": "Set the key to the value", "remove": "Remove the key", "delete": "Delete the completions"},
        default="set",
    )
    key = StringField("Key", render_kw={"autocomplete": "off", "spellcheck": "false"})
    value = StringField("Value", render_kw={"autocomplete": "off"})
    scope = RadioField(
        "Apply to",
        choices={"selected": "The completions ticked below", "all": "Every completion matching the filter"},
        default="selected",
    )
    ids = MultiValueField()
    upto = HiddenField()

    # The cleaned change once validate() has passed: the key, and its value (None removes it; both None: delete).
    change: tuple[str | None, str | None] | None = None

    def validate(self, extra_validators: Any = None) -> bool:
        """Check the key (and value) by the metadata rules, and that something is chosen."""
        if not super().validate(extra_validators):
            return False
        # Spaces around a key are never meant (a form-only convenience: the API keeps OpenAI's rules).
        key = self.key.data = (self.key.data or "").strip()
        try:
            if self.action.data == "delete":
                self.change = (None, None)
            elif self.action.data == "remove":
                self.change = (validation.clean_metadata_key(key), None)
            else:
                (key, value), = validation.clean_metadata({key: self.value.data or ""}).items()
                self.change = (key, value)
        except ValidationError as exc:
            attach_error(self, exc, {key: self})
            return False
        if self.scope.data == "selected" and not self.ids.data:
            attach_error(self, ValidationError("Tick at least one completion, or apply to every completion matching the filter.", "scope"))
            return False
        if self.upto.data and not self.upto.data.isdigit():
            attach_error(self, ValidationError("The confirmation page was altered: start again from the list.", None))
            return False
        return True


class UndoForm(FlaskForm):
    """Undo a bulk change, then go back to ``next`` (the page the button was on)."""

    next = HiddenField()


class RestoreForm(FlaskForm):
    """Put back the metadata as it stood ``before`` or ``after`` a recorded change, if still at ``version``."""

    version = HiddenField(validators=[InputRequired()])
    state = HiddenField(validators=[AnyOf(["before", "after"])])


class ApiKeyForm(FlaskForm):
    """A new API key: its name and scope."""

    name = StringField("Name", render_kw={"autocomplete": "off", "spellcheck": "false", "placeholder": "e.g. eval-runner"})
    read_only = BooleanField("Read-only: can list and retrieve, but not change or delete")

    def validate(self, extra_validators: Any = None) -> bool:
        """Check the name by the rule the command line uses too."""
        if not super().validate(extra_validators):
            return False
        try:
            self.name.data = validation.clean_api_key_name(self.name.data)
        except ValidationError as exc:
            attach_error(self, exc)
            return False
        return True


class RevokeKeyForm(FlaskForm):
    """Revoke the live API key of this name (sent from its confirmation page)."""

    name = HiddenField(validators=[InputRequired()])
