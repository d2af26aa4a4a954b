"""Secrets named in the config file by an environment variable: one type, one validator.

A ``*_env`` key holds the *name* of an environment variable; the loader reads the variable's value once, while it
validates the file (the mapping it reads is passed in the validation context as ``environ``, so tests give their
own). The field's value stays the variable's name (a ``str``, dumped and compared as before); the secret rides
beside it as :attr:`EnvSecret.secret`, a :class:`pydantic.SecretStr` that is never printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import GetCoreSchemaHandler, SecretStr, ValidationInfo
from pydantic_core import core_schema

#: in ``secrets_for`` (see :func:`audience_sync.config.load_config`): the ``[alerts]`` webhook's URL is needed
ALERTS = "[alerts]"


class EnvSecret(str):
    """The name of an environment variable that holds a secret, and the secret it held when the file was loaded.

    Validation fails, naming the variable and the key (never the value), when the variable is unset or empty.

    The secret's owner is the destination whose ``name`` was validated before it, else :data:`ALERTS`. When the
    validation context's ``secrets_for`` is a set that does not name the owner, the command does not use this
    secret: it is not read or checked, and an empty secret stands for it.
    """

    #: a secret sent in an HTTP header must be printable ASCII (see :class:`HeaderSecret`)
    header: ClassVar[bool] = False
    secret: SecretStr

    def __new__(cls, var: str, secret: SecretStr | None = None) -> EnvSecret:
        made = super().__new__(cls, var)
        made.secret = secret if secret is not None else SecretStr("")
        return made

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(
            cls._from_env,
            core_schema.str_schema(min_length=1),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def _from_env(cls, var: str, info: ValidationInfo) -> EnvSecret:
        field = info.field_name or "?"
        context = info.context or {}
        wanted = context.get("secrets_for")
        owner = info.data.get("name", ALERTS) if isinstance(info.data, dict) else ALERTS
        if wanted is not None and owner not in wanted:
            return cls(var, SecretStr(""))
        environ: Mapping[str, str] = context.get("environ", {})
        value = environ.get(var)
        if not value:
            raise ValueError(f"environment variable {var} (named by `{field}`) is not set")
        if cls.header and not (value.isascii() and value.isprintable()):
            raise ValueError(
                f"environment variable {var} (named by `{field}`) holds a character an HTTP header cannot carry "
                f"(only printable ASCII can: check it for accents, a line break or a stray control character)"
            )
        return cls(var, SecretStr(value))


class HeaderSecret(EnvSecret):
    """An :class:`EnvSecret` sent in an HTTP header: its value must also be printable ASCII."""

    header = True
