"""Suite-wide settings."""

from hypothesis import settings

# No per-example deadline: a property either holds or fails whatever the machine's speed, and
# a 2-core CI host busy with other tests can take longer than Hypothesis's default 200 ms for
# an example (a JAX call compiling, a garbage collection) without anything being wrong.
settings.register_profile("bytelm", deadline=None)
settings.load_profile("bytelm")
