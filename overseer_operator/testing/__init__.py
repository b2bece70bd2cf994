"""Test helpers shipped with the package: the Manager emulator and the worker simulator."""
