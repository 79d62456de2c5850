"""Database URLs as they may be shown: with any password masked."""


def mask(url: str) -> str:
    """Hide a password in a database URL before it is printed or logged."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
