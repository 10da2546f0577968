"""simic.consumer"""
