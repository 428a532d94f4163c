import BuddyCore
