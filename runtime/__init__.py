"""infleet.runtime"""
