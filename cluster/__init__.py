"""infleet.cluster"""
